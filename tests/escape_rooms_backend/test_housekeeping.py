"""The runner's daily chores: expired sessions go, live ones stay."""

import logging
from datetime import timedelta

import pytest
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.utils import timezone

from escape_rooms_backend import housekeeping

from ..conftest import wait_for


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """Each test starts as a process whose chores have never run."""
    monkeypatch.setattr(housekeeping, "_last_run", None)


def sessions(count: int, *, expired: bool) -> list[str]:
    """``count`` stored sessions (as the booking forms leave them), expired or live."""
    keys = []
    for _ in range(count):
        store = SessionStore()
        store["booking_form_keys"] = ["a key"]
        store.create()
        keys.append(store.session_key)
    shift = -timedelta(days=1) if expired else timedelta(days=13)
    Session.objects.filter(session_key__in=keys).update(expire_date=timezone.now() + shift)
    return keys


@pytest.mark.django_db
def test_expired_sessions_go_in_batches_and_live_ones_stay(monkeypatch):
    monkeypatch.setattr(housekeeping, "PURGE_BATCH", 7)
    sessions(20, expired=True)
    live = sessions(3, expired=False)

    removed = housekeeping.run()

    assert removed["expired sessions"] == 20
    assert sorted(Session.objects.values_list("session_key", flat=True)) == sorted(live)


@pytest.mark.django_db
def test_the_chores_run_once_a_day_not_at_every_sweep(settings):
    settings.HOUSEKEEPING_SECONDS = 86400
    sessions(2, expired=True)

    assert housekeeping.run_if_due()["expired sessions"] == 2
    sessions(2, expired=True)
    assert housekeeping.run_if_due() is None  # not due again today
    assert Session.objects.count() == 2
    settings.HOUSEKEEPING_SECONDS = 0
    assert housekeeping.run_if_due()["expired sessions"] == 2


@pytest.mark.django_db
def test_a_failing_chore_is_logged_and_the_others_still_run(caplog):
    def broken(now):
        raise RuntimeError("disk full")

    housekeeping.register("broken things", broken)
    try:
        sessions(1, expired=True)
        with caplog.at_level(logging.ERROR):
            removed = housekeeping.run_if_due()
    finally:
        housekeeping.unregister("broken things")

    assert removed is not None and removed["expired sessions"] == 1
    assert "broken things" not in removed
    assert "Housekeeping failed: broken things" in caplog.text
    assert housekeeping.run_if_due() is not None  # tried again at the next pass


@pytest.mark.django_db(transaction=True)
@pytest.mark.integration
def test_a_starting_runner_purges_the_expired_sessions(start_worker):
    sessions(30, expired=True)
    live = sessions(2, expired=False)

    worker = start_worker()

    assert wait_for(lambda: Session.objects.count() == 2, timeout=10), worker.log()
    assert set(Session.objects.values_list("session_key", flat=True)) == set(live)
    assert "Housekeeping removed 30 expired sessions" in worker.log()
