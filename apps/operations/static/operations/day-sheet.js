// Counts each hold down from the server's own figure (seconds left when the
// page was rendered), measured with the monotonic clock: the browser's wall
// clock may be wrong. Without JavaScript the sheet says "until 19:42" and the
// meta refresh keeps it current. When a hold ends the sheet reloads once, to
// show what the server says now (free, or offered to the waiting list).
(function () {
  const countdowns = Array.from(document.querySelectorAll(".countdown[data-seconds-left]"));
  if (!countdowns.length) return;
  const started = performance.now();
  let reloading = false;

  function format(seconds) {
    const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    const mmss = `${String(m).padStart(2, "0")}:${String(s).padStart(2, "0")}`;
    return h > 0 ? `${h}:${mmss} left` : `${mmss} left`;
  }

  function tick() {
    const elapsed = (performance.now() - started) / 1000;
    let ended = false;
    for (const countdown of countdowns) {
      const left = Math.max(0, Math.ceil(Number(countdown.dataset.secondsLeft) - elapsed));
      countdown.textContent = left > 0 ? format(left) : "hold ended";
      countdown.classList.toggle("ending", left > 0 && left <= 300);
      if (left === 0) ended = true;
    }
    if (ended && !reloading) {
      reloading = true;
      setTimeout(() => window.location.reload(), 1500);
    }
    setTimeout(tick, 250);
  }
  tick();
})();
