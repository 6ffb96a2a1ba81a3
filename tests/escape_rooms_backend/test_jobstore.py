"""The job store: folding due jobs of a folding kind into one run, and how it is built."""

from datetime import timedelta

import pytest
from django.utils import timezone
from sqlalchemy import event

from escape_rooms_backend import deadlines, timeline
from escape_rooms_backend.deadlines import DeadlineKind
from escape_rooms_backend.jobstore import (
    FoldingJobStore,
    delete_not_due,
    run_times,
    store_options,
)
from escape_rooms_backend.lifecycle import SWEEP_JOB_FUNC, SWEEP_JOB_ID, process


def kind(name: str, job_prefix: str, *, fold: bool) -> DeadlineKind:
    return DeadlineKind(
        name=name,
        job_prefix=job_prefix,
        due_at=lambda reservation: None,
        handle=lambda reservation_ids, by: [],
        sweep=lambda now, by: 0,
        scheduled=lambda: [],
        fold=fold,
    )


@pytest.fixture
def folding():
    """A kind whose handle does every due deadline at once, and one whose handle does not."""
    added = [
        deadlines.register(kind("bulk", "bulk:", fold=True)),
        deadlines.register(kind("single", "single:", fold=False)),
    ]
    yield added
    for each in added:
        deadlines.unregister(each.name)


def store_with_jobs(job_store, run_times: dict[str, object]) -> FoldingJobStore:
    """The store with these jobs written through the scheduler, as the timeline writes them."""
    job_store.create()
    writer = process.writable()
    for job_id, run_time in run_times.items():
        deadline = next((k for k in deadlines.kinds() if job_id.startswith(k.job_prefix)), None)
        if deadline is None:
            writer.add_job(SWEEP_JOB_FUNC, "date", run_date=run_time, id=job_id)
        else:
            pk = deadline.reservation_id(job_id)
            writer.add_job(
                timeline.JOB_FUNC, "date", run_date=run_time, id=job_id, args=[deadline.name, pk]
            )
    store = process.job_store()
    assert isinstance(store, FoldingJobStore)
    return store


def due(now, *job_ids: str) -> dict[str, object]:
    """Jobs that fell due a second apart, the first the earliest, the last a second ago."""
    return {job_id: now - timedelta(seconds=len(job_ids) - i) for i, job_id in enumerate(job_ids)}


def test_the_store_folds_due_jobs_of_a_folding_kind_into_the_earliest(job_store, folding):
    now = timezone.now()
    store = store_with_jobs(
        job_store,
        {
            **due(now, "bulk:7", "bulk:8", "bulk:9"),
            "bulk:10": now + timedelta(minutes=5),
            SWEEP_JOB_ID: now - timedelta(seconds=2),
        },
    )

    handed_over = store.get_due_jobs(now)

    assert [job.id for job in handed_over] == ["bulk:7", SWEEP_JOB_ID]
    assert handed_over[0].args == ("bulk", 7)
    assert handed_over[0].kwargs == {"coalesced": [8, 9]}
    # The folded jobs are gone; the job not yet due and the sweep stay.
    assert set(job_store.jobs()) == {"bulk:7", "bulk:10", SWEEP_JOB_ID}


def test_due_jobs_of_a_kind_that_does_not_fold_are_each_handed_over(job_store, folding):
    now = timezone.now()
    store = store_with_jobs(
        job_store,
        {**due(now, "single:1", "single:2"), "bulk:3": now - timedelta(milliseconds=500)},
    )

    handed_over = store.get_due_jobs(now)

    assert [(job.id, job.kwargs) for job in handed_over] == [
        ("single:1", {}),
        ("single:2", {}),
        ("bulk:3", {}),
    ]
    assert set(job_store.jobs()) == {"single:1", "single:2", "bulk:3"}


def test_when_the_first_due_job_moved_meanwhile_the_next_one_carries_the_rest(job_store, folding):
    # Another process extends the earliest hold (moving its job an hour on)
    # between the store reading the due ids and reading that job.
    now = timezone.now()
    store = store_with_jobs(job_store, due(now, "bulk:7", "bulk:8", "bulk:9"))
    later = (now + timedelta(hours=1)).timestamp()
    moved = []

    def move_the_first_job(conn, cursor, statement, parameters, context, executemany):
        if "job_state" in statement and not moved:
            moved.append(True)
            with store.engine.begin() as other:
                other.execute(
                    store.jobs_t.update()
                    .where(store.jobs_t.c.id == "bulk:7")
                    .values(next_run_time=later)
                )

    event.listen(store.engine, "before_cursor_execute", move_the_first_job)
    try:
        handed_over = store.get_due_jobs(now)
    finally:
        event.remove(store.engine, "before_cursor_execute", move_the_first_job)

    # The next due job carries the rest; the moved one keeps its row and time.
    assert moved
    assert [(job.id, job.kwargs) for job in handed_over] == [("bulk:8", {"coalesced": [9]})]
    assert set(job_store.jobs()) == {"bulk:7", "bulk:8"}
    assert job_store.jobs()["bulk:7"] > now


def test_the_store_hands_over_a_single_due_job_unchanged(job_store, folding):
    now = timezone.now()
    store = store_with_jobs(job_store, due(now, "bulk:7"))

    handed_over = store.get_due_jobs(now)

    assert [(job.id, job.kwargs) for job in handed_over] == [("bulk:7", {})]


def test_run_times_reads_the_jobs_of_one_prefix(job_store, folding):
    now = timezone.now().replace(microsecond=0)
    store = store_with_jobs(
        job_store, {"bulk:1": now, "bulk:2": now + timedelta(hours=1), "single:1": now}
    )

    assert run_times(store, "bulk:") == {"bulk:1": now, "bulk:2": now + timedelta(hours=1)}


def test_only_jobs_not_yet_due_are_deleted_in_bulk(job_store, folding):
    # A due job is the runner's: it may have handed it to its executor already.
    now = timezone.now()
    store = store_with_jobs(
        job_store,
        {"bulk:1": now - timedelta(seconds=1), "bulk:2": now + timedelta(hours=1), "bulk:3": now},
    )

    delete_not_due(store, ["bulk:1", "bulk:2", "bulk:404"], now.timestamp())

    assert set(job_store.jobs()) == {"bulk:1", "bulk:3"}


@pytest.mark.parametrize(
    "url", ["sqlite:///:memory:", "postgresql+psycopg://u@localhost/db"], ids=["memory", "server"]
)
def test_job_stores_without_a_file_still_check_their_connections(url):
    options = store_options({"type": "sqlalchemy", "url": url})

    assert options["engine_options"]["pool_pre_ping"] is True
    assert (options["url"], options["class"]) == (url, FoldingJobStore)
    assert "type" not in options


def test_a_sqlite_job_store_gets_its_folder_and_a_short_busy_timeout(tmp_path):
    path = tmp_path / "new" / "jobs.sqlite3"

    options = store_options({"type": "sqlalchemy", "url": f"sqlite:///{path}"})

    assert path.parent.is_dir()
    assert options["engine_options"]["connect_args"]["timeout"] == 2


def test_other_job_stores_keep_their_options():
    memory = {"type": "memory"}

    assert store_options(memory) == memory


def test_a_sqlite_job_store_commits_without_waiting_for_an_fsync(job_store):
    job_store.create()

    with process.job_store().engine.connect() as db:
        journal = db.exec_driver_sql("PRAGMA journal_mode").scalar()
        synchronous = db.exec_driver_sql("PRAGMA synchronous").scalar()

    assert (journal, synchronous) == ("wal", 1)  # 1 is NORMAL: durable once in the WAL
