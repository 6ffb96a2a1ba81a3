// Counts down the hold from the server's own figure (seconds left when the page
// was rendered), measured with the monotonic clock: the browser's wall clock
// may be wrong. At zero it asks the server, and shows what the server says.
(function () {
  const hold = document.getElementById("hold");
  if (!hold) return;
  const secondsLeft = Number(hold.dataset.secondsLeft);
  const warnSeconds = Number(hold.dataset.warnSeconds);
  const started = performance.now();
  const timeLeft = document.getElementById("time-left");
  const warning = document.getElementById("warning");
  const announce = (text) => { document.getElementById("hold-state").textContent = text; };

  function format(seconds) {
    const m = Math.floor(seconds / 60), s = seconds % 60;
    return m > 0 ? `${m} min ${String(s).padStart(2, "0")} s` : `${s} seconds`;
  }

  async function askServer() {
    try {
      const response = await fetch(hold.dataset.statusUrl, { headers: { Accept: "application/json" } });
      const body = await response.json();
      if (body.status !== "pending") { window.location.reload(); return; }
    } catch (error) { /* offline: try again */ }
    setTimeout(askServer, 1000);
  }

  function tick() {
    const left = Math.max(0, Math.ceil(secondsLeft - (performance.now() - started) / 1000));
    timeLeft.textContent = format(left);
    if (left <= warnSeconds) warning.hidden = false;
    if (left === 0) {
      timeLeft.textContent = "No time";
      announce("The hold has ended. Checking with the venue…");
      askServer();
      return;
    }
    setTimeout(tick, 250);
  }
  tick();
})();
