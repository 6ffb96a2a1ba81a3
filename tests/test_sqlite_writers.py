"""
SQLite's writers queue on a file lock (``config.sqlite``): a waiting
transaction starts as soon as the one before it ends, not at the busy
handler's next look.
"""

import fcntl
import os
import threading
import time

import pytest
from django.db import connection, transaction

from apps.rooms.models import Room

from .factories import RoomFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def sqlite_only():
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's one write lock; PostgreSQL locks rows")


def lock_is_free() -> bool:
    fd = os.open(f"{connection.settings_dict['NAME']}.writers", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def test_a_write_transaction_holds_the_file_lock_until_it_ends():
    room = RoomFactory()
    with transaction.atomic():
        Room.objects.filter(pk=room.pk).update(name="Held")
        assert not lock_is_free()
    assert lock_is_free()

    with pytest.raises(ZeroDivisionError), transaction.atomic():
        Room.objects.filter(pk=room.pk).update(name="Rolled back")
        raise ZeroDivisionError
    assert lock_is_free()
    assert Room.objects.get(pk=room.pk).name == "Held"


def behind_a_transaction(write) -> float:
    """
    Run ``write(room)`` in a thread while another holds a write transaction.

    The other commits 340 ms after it began: SQLite's busy handler, left to
    itself, looks at 328 ms and next at 428 ms, so the write would wait about
    90 ms more. Returns the seconds from that commit to the write's end (or,
    for a write that records its own moment, to that moment).
    """
    room = RoomFactory()
    began = threading.Event()
    committed_at: list[float] = []
    written_at: list[float] = []

    def first() -> None:
        with transaction.atomic():
            Room.objects.filter(pk=room.pk).update(name="First")
            began.set()
            time.sleep(0.34)
        committed_at.append(time.monotonic())
        connection.close()

    def second() -> None:
        began.wait()
        written_at.append(write(room))
        connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert Room.objects.get(pk=room.pk).name == "Second"
    return written_at[0] - committed_at[0]


def test_a_waiting_writer_starts_as_soon_as_the_writer_before_it_commits():
    def write(room) -> float:
        with transaction.atomic():
            started = time.monotonic()
            Room.objects.filter(pk=room.pk).update(name="Second")
        return started

    waited_after_commit = behind_a_transaction(write)

    assert -0.005 < waited_after_commit < 0.03, f"{waited_after_commit * 1000:.1f} ms"


def test_a_write_outside_a_transaction_queues_too():
    def write(room) -> float:
        Room.objects.filter(pk=room.pk).update(name="Second")  # autocommit: no BEGIN
        assert lock_is_free()
        return time.monotonic()

    waited_after_commit = behind_a_transaction(write)

    assert -0.005 < waited_after_commit < 0.03, f"{waited_after_commit * 1000:.1f} ms"
