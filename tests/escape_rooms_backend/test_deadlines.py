"""The registry of deadline kinds: names, job ids, and one kind per job id."""

import pytest

from escape_rooms_backend import deadlines
from escape_rooms_backend.deadlines import DeadlineKind

# The registry with the hold's end alone: the tests register kinds of their own.
pytestmark = pytest.mark.usefixtures("hold_end_only")


def kind(name: str, job_prefix: str) -> DeadlineKind:
    """A kind that does nothing: the registry looks only at its name and prefix."""
    return DeadlineKind(
        name=name,
        job_prefix=job_prefix,
        due_at=lambda reservation: None,
        handle=lambda reservation_ids, by: [],
        sweep=lambda now, by: 0,
        scheduled=lambda: [],
    )


@pytest.fixture
def registered():
    """Register kinds for one test; unregister them afterwards, whatever happened."""
    names = []

    def register(added: DeadlineKind) -> DeadlineKind:
        names.append(added.name)
        return deadlines.register(added)

    yield register
    for name in names:
        deadlines.unregister(name)


def test_a_job_id_names_its_kind_and_reservation():
    reminder = kind("reminder", "remind_reservation:")

    assert reminder.job_id(42) == "remind_reservation:42"
    assert reminder.reservation_id("remind_reservation:42") == 42


@pytest.mark.parametrize(
    "job_id",
    ["expire_reservation:42", "remind_reservation:", "remind_reservation:4x", "remind_reservation"],
)
def test_a_job_id_of_another_kind_or_malformed_names_no_reservation(job_id):
    assert kind("reminder", "remind_reservation:").reservation_id(job_id) is None


def test_registered_kinds_are_listed_in_order_and_found_by_name(registered):
    before = deadlines.kinds()
    reminder = registered(kind("reminder", "remind_reservation:"))
    offer = registered(kind("offer", "offer_lapses:"))

    assert deadlines.kinds() == [*before, reminder, offer]
    assert deadlines.kind_named("offer") is offer


def test_registering_a_kind_again_replaces_it_in_place(registered):
    before = deadlines.kinds()
    registered(kind("reminder", "remind_reservation:"))
    replacement = registered(kind("reminder", "remind_customer:"))

    assert deadlines.kinds() == [*before, replacement]
    assert deadlines.kind_named("reminder").job_prefix == "remind_customer:"


@pytest.mark.parametrize("prefix", ["expire_reservation:", "expire_", "expire_reservation:x"])
def test_a_kind_whose_job_ids_overlap_another_kinds_is_refused(registered, prefix):
    # The hold's end (the reservations app's kind) owns expire_reservation:<pk>.
    before = deadlines.kinds()

    with pytest.raises(ValueError, match="overlaps 'expiry'"):
        registered(kind("clash", prefix))

    assert deadlines.kinds() == before


def test_an_unknown_kind_is_a_lookup_error_and_unregistering_it_is_no_error():
    with pytest.raises(LookupError, match="No deadline kind 'nope' is registered"):
        deadlines.kind_named("nope")

    deadlines.unregister("nope")


def test_importing_the_registry_and_the_timeline_loads_no_apscheduler():
    # Apps register kinds and wire the receiver in ready(): that must cost
    # a process (migrate, shell) no scheduler import.
    import subprocess
    import sys

    code = (
        "import sys; import escape_rooms_backend.deadlines, escape_rooms_backend.timeline; "
        "print(sorted(m for m in sys.modules if m.startswith(('apscheduler', 'sqlalchemy'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )

    assert result.stdout.strip() == "[]"
