// Counts down the hold from the server's own figure (seconds left when the page
// was rendered), measured with the monotonic clock: the browser's wall clock
// may be wrong. At zero it asks the server, and shows what the server says.
(function () {
  const hold = document.getElementById("hold");
  if (!hold) return;
  let secondsLeft = Number(hold.dataset.secondsLeft);
  const warnSeconds = Number(hold.dataset.warnSeconds);
  let started = performance.now();
  let timer = null;
  const timeLeft = document.getElementById("time-left");
  const warning = document.getElementById("warning");
  const announce = (text) => { document.getElementById("hold-state").textContent = text; };

  function format(seconds) {
    const m = Math.floor(seconds / 60), s = seconds % 60;
    if (m > 0) return `${m} min ${String(s).padStart(2, "0")} s`;
    return s === 1 ? "1 second" : `${s} seconds`;
  }

  // The server's word: reload into the final state, or count on from its figure
  // (the hold may have been extended in another tab).
  async function askServer(retry) {
    try {
      const response = await fetch(hold.dataset.statusUrl, { headers: { Accept: "application/json" } });
      const body = await response.json();
      if (body.status !== "pending") { window.location.reload(); return; }
      if (body.seconds_left > 0) { restart(body.seconds_left); return; }
    } catch (error) { /* offline: try again */ }
    if (retry) setTimeout(() => askServer(true), 2000);
  }

  function restart(seconds) {
    secondsLeft = seconds;
    started = performance.now();
    clearTimeout(timer);
    tick();
  }

  function tick() {
    const left = Math.max(0, Math.ceil(secondsLeft - (performance.now() - started) / 1000));
    timeLeft.textContent = format(left);
    if (left <= warnSeconds) warning.hidden = false;
    if (left === 0) {
      timeLeft.textContent = "No time";
      announce("The hold has ended. Checking with the venue…");
      askServer(true);
      return;
    }
    timer = setTimeout(tick, 250);
  }
  tick();
  // Back from another page or tab, or after sleep: ask again rather than trust the old figure.
  window.addEventListener("pageshow", (event) => { if (event.persisted) askServer(false); });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) askServer(false); });
})();
