-- wrk script: POST /api/reservations/ for a new slot on every request.
--   wrk -t2 -c8 -d20s -s scripts/bench/reserve.lua http://127.0.0.1:PORT -- FIRST_SLOT_ID 2
-- (the last argument repeats -t). Thread i books slots FIRST+i, FIRST+i+2,
-- FIRST+i+4, ... so no two requests share
-- a slot. done() prints one JSON line with the counts and latencies (µs).

local threads = {}

function setup(thread)
  thread:set("index", #threads)
  table.insert(threads, thread)
end

function init(args)
  first = tonumber(args[1])
  nthreads = tonumber(args[2])
  counter = 0
end

function request()
  local slot = first + index + counter * nthreads
  counter = counter + 1
  local body = string.format(
    '{"slot_id": %d, "customer_name": "Bench Customer", '
    .. '"customer_email": "bench%d@example.com", "party_size": 3}', slot, slot)
  -- Each request a customer of its own, behind the trusted proxy (127.0.0.1).
  local client = string.format("10.%d.%d.%d",
    math.floor(slot / 65536) % 256, math.floor(slot / 256) % 256, slot % 256)
  return wrk.format("POST", "/api/reservations/",
    {["Content-Type"] = "application/json", ["X-Forwarded-For"] = client}, body)
end

function done(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
