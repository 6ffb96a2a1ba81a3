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


def test_a_waiting_writer_starts_as_soon_as_the_writer_before_it_commits():
    room = RoomFactory()
    began = threading.Event()
    committed_at: list[float] = []
    started_at: list[float] = []

    def first() -> None:
        with transaction.atomic():
            Room.objects.filter(pk=room.pk).update(name="First")
            began.set()
            # SQLite's busy handler, left to itself, looks at 328 ms and next
            # at 428 ms: a commit at 340 ms would keep the second waiting ~90 ms.
            time.sleep(0.34)
        committed_at.append(time.monotonic())
        connection.close()

    def second() -> None:
        began.wait()
        with transaction.atomic():
            started_at.append(time.monotonic())
            Room.objects.filter(pk=room.pk).update(name="Second")
        connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert Room.objects.get(pk=room.pk).name == "Second"
    waited_after_commit = started_at[0] - committed_at[0]
    assert -0.005 < waited_after_commit < 0.03, f"{waited_after_commit * 1000:.1f} ms"


def test_a_write_outside_a_transaction_queues_too():
    room = RoomFactory()
    began = threading.Event()
    committed_at: list[float] = []
    written_at: list[float] = []

    def first() -> None:
        with transaction.atomic():
            Room.objects.filter(pk=room.pk).update(name="First")
            began.set()
            time.sleep(0.34)  # as above: the busy handler's worst moment
        committed_at.append(time.monotonic())
        connection.close()

    def second() -> None:
        began.wait()
        Room.objects.filter(pk=room.pk).update(name="Second")  # autocommit: no BEGIN
        written_at.append(time.monotonic())
        assert lock_is_free()
        connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert Room.objects.get(pk=room.pk).name == "Second"
    waited_after_commit = written_at[0] - committed_at[0]
    assert -0.005 < waited_after_commit < 0.03, f"{waited_after_commit * 1000:.1f} ms"
