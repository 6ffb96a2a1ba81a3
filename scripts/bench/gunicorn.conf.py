"""
gunicorn for the reserve phase: ``config/gunicorn.conf.py`` as it is, with a
line in the log when each worker has loaded the application and is about to
serve (``WORKER_READY``), so that a run starts once every worker can answer;
and without gunicorn's control socket, whose path is one per user (two runs
at once would share it) and whose shutdown holds the master up to 4 s.

    gunicorn -c scripts/bench/gunicorn.conf.py
"""

from pathlib import Path

WORKER_READY = "Bench: worker ready"

_PRODUCT = Path(__file__).resolve().parents[2] / "config" / "gunicorn.conf.py"
_settings: dict = {"__file__": str(_PRODUCT), "__name__": "gunicorn_conf"}
exec(compile(_PRODUCT.read_text(), str(_PRODUCT), "exec"), _settings)  # noqa: S102 (our own file)
globals().update({name: value for name, value in _settings.items() if not name.startswith("_")})
control_socket_disable = True


def post_worker_init(worker) -> None:
    if "post_worker_init" in _settings:
        _settings["post_worker_init"](worker)
    worker.log.info("%s (pid: %s)", WORKER_READY, worker.pid)
