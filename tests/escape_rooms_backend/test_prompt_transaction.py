"""
``prompt_transaction`` takes SQLite's write lock as soon as it is free.

SQLite's own busy wait sleeps longer and longer between tries (1, 2, 5, 10
ms...): a lock held for a few milliseconds cost the next writer twice as
long. The expiry's transaction tries every half millisecond instead, and
still gives up after the connection's busy timeout.
"""

import sqlite3
import threading
import time

import pytest
from django.db import OperationalError, connection

from escape_rooms_backend.db import _run, prompt_transaction

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's write lock"),
]


def blocker() -> sqlite3.Connection:
    """Another connection that holds the database's write lock."""
    other = sqlite3.connect(
        connection.settings_dict["NAME"], isolation_level=None, check_same_thread=False
    )
    other.execute("BEGIN IMMEDIATE")
    return other


def test_the_write_lock_is_taken_within_a_millisecond_or_so_of_its_release():
    _run("PRAGMA busy_timeout = 2000")
    other = blocker()
    released = []

    def release() -> None:
        time.sleep(0.012)  # SQLite's own wait would try at 1, 3, 8 and 18 ms
        released.append(time.monotonic())
        other.execute("ROLLBACK")

    thread = threading.Thread(target=release)
    thread.start()
    with prompt_transaction(), connection.cursor() as cursor:
        took_it = time.monotonic()
        cursor.execute("SELECT 1")
    thread.join()
    other.close()
    assert took_it - released[0] < 0.004
    assert _run("PRAGMA busy_timeout") == 2000  # given back


def test_a_lock_held_past_the_busy_timeout_fails_as_atomic_would():
    _run("PRAGMA busy_timeout = 50")
    other = blocker()
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError, match="locked"), prompt_transaction():
            pass
        assert 0.05 <= time.monotonic() - started < 1
        assert not connection.in_atomic_block
        assert _run("PRAGMA busy_timeout") == 50
    finally:
        other.execute("ROLLBACK")
        other.close()
    # And the connection still works.
    with prompt_transaction(), connection.cursor() as cursor:
        cursor.execute("SELECT 1")
