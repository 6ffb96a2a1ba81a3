"""Staff see each slot's waiting list and its offers in the admin, and take parties off it."""

import re
from datetime import timedelta
from html import unescape

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from apps.reservations import services as reservations
from apps.reservations import waitlist
from apps.reservations.models import Reservation, ReservationEvent, WaitingEntry

from ..factories import RoomFactory, TimeSlotFactory, reserve

pytestmark = pytest.mark.django_db

Entry = WaitingEntry.Status
ENTRIES = "/admin/reservations/waitingentry/"
RESERVATIONS = "/admin/reservations/reservation/"
SLOTS = "/admin/rooms/timeslot/"


def staff_with(client, *codenames):
    user = get_user_model().objects.create_user("desk", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return user


@pytest.fixture
def staff(client):
    return staff_with(
        client,
        "view_waitingentry",
        "change_waitingentry",
        "view_reservation",
        "view_reservationevent",
        "view_timeslot",
        "change_timeslot",
    )


def join(slot, email, **overrides) -> WaitingEntry:
    fields = {"customer_name": email.split("@")[0].title(), "party_size": 3}
    return waitlist.waiting_join(
        time_slot_id=slot.pk, customer_email=email, **{**fields, **overrides}
    )


@pytest.fixture
def offered():
    """
    A slot whose hold was cancelled: Ada, first on its list, is offered it;
    Bo and Cy wait behind her. Returns (slot, ada, bo, cy), read again.
    """
    slot = TimeSlotFactory(room=RoomFactory(name="The Lost Tomb", slug="tomb"))
    hold = reserve(slot, customer_email="holder@example.com")
    ada, bo, cy = (join(slot, f"{name}@example.com") for name in ("ada", "bo", "cy"))
    reservations.reservation_cancel(reservation=hold)
    for entry in (ada, bo, cy):
        entry.refresh_from_db()
    assert (ada.status, bo.status, cy.status) == (Entry.OFFERED, Entry.WAITING, Entry.WAITING)
    return slot, ada, bo, cy


def rows(response) -> dict[str, dict[str, str]]:
    """The changelist's rows by customer name: each column's text."""
    cl = response.context["cl"]
    admin = cl.model_admin
    table = {}
    for entry in cl.result_list:
        table[entry.customer_name] = {
            column: unescape(re.sub(r"<[^>]+>", "", str(getattr(admin, column)(entry))))
            for column in ("slot_time", "room", "place_or_status", "offer_link")
        }
    return table


def remove(client, entries, follow=True):
    return client.post(
        ENTRIES,
        {"action": "remove_from_list", ACTION_CHECKBOX_NAME: [e.pk for e in entries]},
        follow=follow,
    )


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# ---------------------------------------------------------------------------
# The list of entries
# ---------------------------------------------------------------------------


def test_the_list_shows_each_partys_place_and_the_offer_with_its_time_left(
    client, staff, offered, settings
):
    settings.WAITLIST_OFFER_SECONDS = 900
    slot, ada, bo, cy = offered

    response = client.get(ENTRIES)

    assert response.status_code == 200
    when = f"{timezone.localtime(slot.starts_at):%Y-%m-%d %H:%M %Z}"
    table = rows(response)
    assert table["Bo"] == {
        "slot_time": when,
        "room": "The Lost Tomb",
        "place_or_status": "waiting, number 1",
        "offer_link": "-",
    }
    assert table["Cy"]["place_or_status"] == "waiting, number 2"
    assert table["Ada"]["place_or_status"] == "Offered the slot"
    assert table["Ada"]["offer_link"].startswith(f"{str(ada.offer.token)[:8]}: pending, 1")
    assert table["Ada"]["offer_link"].endswith("minutes left")
    html = response.content.decode()
    assert f'href="{RESERVATIONS}{ada.offer.pk}/change/"' in html  # the offer opens
    assert [e.customer_name for e in response.context["cl"].result_list] == ["Ada", "Bo", "Cy"]


def test_the_list_filters_by_status_and_room_and_finds_by_name_or_email(client, staff, offered):
    slot, ada, bo, cy = offered
    elsewhere = TimeSlotFactory(room=RoomFactory(name="Space Station", slug="space"))
    reserve(elsewhere, customer_email="holder@example.com")
    dee = join(elsewhere, "dee@example.com")

    def names(**query):
        response = client.get(ENTRIES, query)
        assert response.status_code == 200
        return [e.customer_name for e in response.context["cl"].result_list]

    assert names(status__exact="waiting") == ["Bo", "Cy", "Dee"]
    assert names(status__exact="offered") == ["Ada"]
    assert names(time_slot__room__id__exact=elsewhere.room_id) == ["Dee"]
    assert names(time_slot__id__exact=slot.pk) == ["Ada", "Bo", "Cy"]
    assert names(q="bo@example") == ["Bo"]
    assert names(q="dee") == ["Dee"]
    assert dee.status == Entry.WAITING


def test_an_entrys_page_is_read_only_and_links_its_offer(client, staff, offered):
    slot, ada, bo, cy = offered

    page = client.get(f"{ENTRIES}{ada.pk}/change/")
    waiting = client.get(f"{ENTRIES}{cy.pk}/change/")

    assert page.status_code == waiting.status_code == 200
    html = page.content.decode()
    assert 'name="_save"' not in html
    assert f'href="{RESERVATIONS}{ada.offer.pk}/change/"' in html
    assert "waiting, number 2" in waiting.content.decode()
    assert client.get(f"{ENTRIES}add/").status_code == 403  # joined by customers only


# ---------------------------------------------------------------------------
# Remove from the list
# ---------------------------------------------------------------------------


def test_removing_a_waiting_party_leaves_the_others_in_order(client, staff, offered):
    slot, ada, bo, cy = offered

    response = remove(client, [bo])

    bo.refresh_from_db(), cy.refresh_from_db(), ada.refresh_from_db()
    assert (bo.status, cy.status, ada.status) == (Entry.LEFT, Entry.WAITING, Entry.OFFERED)
    assert bo.ended_at is not None
    assert waitlist.offers.waiting_place(cy) == 1
    assert messages_of(response) == ["1 party(ies) removed from the waiting list."]


def test_removing_the_offered_party_cancels_its_offer_as_staff_and_passes_it_on(
    client, staff, offered
):
    slot, ada, bo, cy = offered
    offer = ada.offer

    response = remove(client, [ada])

    ada.refresh_from_db(), bo.refresh_from_db(), offer.refresh_from_db()
    assert (ada.status, bo.status) == (Entry.LEFT, Entry.OFFERED)
    assert (offer.status, offer.cancellation_reason) == ("cancelled", "staff")
    cancelled = offer.events.get(to_status="cancelled")
    assert (cancelled.cause, cancelled.staff_user) == (ReservationEvent.Cause.STAFF, staff)
    assert bo.offer.status == "pending" and bo.offer.is_offer
    assert messages_of(response) == [
        "1 party(ies) removed from the waiting list. "
        "1 offer(s) cancelled and passed to the next party waiting."
    ]


def test_removing_a_party_whose_place_ended_changes_nothing_and_says_so(client, staff, offered):
    slot, ada, bo, cy = offered
    reservations.reservation_pay(reservation=ada.offer, payment_reference="PAY-ADA")
    waitlist.waiting_leave(entry=cy)

    response = remove(client, [ada, cy])

    ada.refresh_from_db(), cy.refresh_from_db()
    assert (ada.status, cy.status) == (Entry.BOOKED, Entry.LEFT)
    assert Reservation.objects.get(pk=ada.offer_id).status == "paid"
    assert messages_of(response) == ["2 skipped: their place on the list had already ended."]


def test_staff_who_may_only_view_cannot_remove_a_party(client, offered):
    staff_with(client, "view_waitingentry")
    slot, ada, bo, cy = offered

    response = remove(client, [ada, bo], follow=False)

    assert response.status_code in (200, 302, 403)
    ada.refresh_from_db(), bo.refresh_from_db()
    assert (ada.status, bo.status) == (Entry.OFFERED, Entry.WAITING)
    assert ada.offer.status == "pending"


# ---------------------------------------------------------------------------
# The slot's page
# ---------------------------------------------------------------------------


def test_the_slots_page_shows_its_waiting_list_with_places_and_the_offer(client, staff, offered):
    slot, ada, bo, cy = offered
    other = TimeSlotFactory(room=slot.room)

    listed = client.get(SLOTS)
    page = client.get(f"{SLOTS}{slot.pk}/change/")
    empty = client.get(f"{SLOTS}{other.pk}/change/")

    assert listed.status_code == page.status_code == empty.status_code == 200
    assert f'<a href="{ENTRIES}?time_slot__id__exact={slot.pk}">2 waiting, 1 offered</a>' in (
        listed.content.decode()
    )
    html = page.content.decode()
    assert "Waiting list" in html
    # In the order they joined (by address: a name's two letters may turn up in a random token).
    emails = ("ada@example.com", "bo@example.com", "cy@example.com")
    assert [html.index(email) for email in emails] == sorted(html.index(email) for email in emails)
    assert "waiting, number 1" in html and "waiting, number 2" in html
    assert f'href="{RESERVATIONS}{ada.offer.pk}/change/"' in html
    assert f'href="{ENTRIES}{bo.pk}/change/"' in html  # each entry opens
    assert "ada@example.com" not in empty.content.decode()


def test_a_slot_with_a_waiting_list_can_still_be_edited(client, offered):
    admin_user = get_user_model().objects.create_superuser("boss", password="pw")
    client.force_login(admin_user)
    slot, ada, bo, cy = offered
    later = slot.ends_at + timedelta(minutes=15)
    local_start, local_end = timezone.localtime(slot.starts_at), timezone.localtime(later)

    response = client.post(
        f"{SLOTS}{slot.pk}/change/",
        {
            "room": slot.room_id,
            "starts_at_0": f"{local_start:%Y-%m-%d}",
            "starts_at_1": f"{local_start:%H:%M:%S}",
            "ends_at_0": f"{local_end:%Y-%m-%d}",
            "ends_at_1": f"{local_end:%H:%M:%S}",
            "waiting_entries-TOTAL_FORMS": "3",
            "waiting_entries-INITIAL_FORMS": "3",
            **{f"waiting_entries-{i}-id": e.pk for i, e in enumerate((ada, bo, cy))},
            **{f"waiting_entries-{i}-time_slot": slot.pk for i in range(3)},
        },
    )

    assert response.status_code == 302, response.context["errors"]
    slot.refresh_from_db()
    assert slot.ends_at == later
    assert list(WaitingEntry.objects.values_list("customer_name", "status")) == [
        ("Ada", Entry.OFFERED),
        ("Bo", Entry.WAITING),
        ("Cy", Entry.WAITING),
    ]


# ---------------------------------------------------------------------------
# Offers among the reservations, and their history
# ---------------------------------------------------------------------------


def test_the_reservations_list_marks_and_filters_the_offers(client, staff, offered):
    slot, ada, bo, cy = offered
    plain = reserve(customer_email="plain@example.com")

    everything = client.get(RESERVATIONS)
    only_offers = client.get(RESERVATIONS, {"is_offer__exact": "1"})
    no_offers = client.get(RESERVATIONS, {"is_offer__exact": "0"})

    assert everything.status_code == 200
    assert 'class="field-is_offer"' in everything.content.decode()
    assert list(only_offers.context["cl"].result_list) == [ada.offer]
    assert plain in list(no_offers.context["cl"].result_list)
    assert ada.offer not in list(no_offers.context["cl"].result_list)


def test_an_offers_page_links_its_entry_and_its_history_shows_the_offer_and_its_lapse(
    client, staff, offered
):
    slot, ada, bo, cy = offered
    offer = ada.offer
    reservations.lapsed_holds_release(
        cause=ReservationEvent.Cause.EXPIRY_JOB, now=offer.expires_at + timedelta(seconds=1)
    )
    bo.refresh_from_db()
    reservations.reservation_pay(
        reservation=bo.offer, payment_reference="PAY-BO", now=bo.offer.created_at
    )

    lapsed = client.get(f"{RESERVATIONS}{offer.pk}/change/").content.decode()
    taken = client.get(f"{RESERVATIONS}{bo.offer_id}/change/").content.decode()
    plain = client.get(
        f"{RESERVATIONS}{reserve(customer_email='p@example.com').pk}/change/"
    ).content.decode()

    assert f'<a href="{ENTRIES}{ada.pk}/change/">Ada (Let the offer lapse)</a>' in lapsed
    assert f'<a href="{ENTRIES}{bo.pk}/change/">Bo (Booked the slot)</a>' in taken
    assert re.search(rf"{ENTRIES}\d+/change/", plain) is None  # not an offer: no entry
    # The history: offered from the list, then lapsed; the next offer, paid.
    assert "Waiting list" in lapsed
    assert f"Offered to the first party on the waiting list (entry {ada.pk})" in lapsed
    assert "Expiry job" in lapsed
    assert lapsed.index("Waiting list") < lapsed.index("Expiry job")
    assert f"Offered to the first party on the waiting list (entry {bo.pk})" in taken
    assert "Payment reference PAY-BO" in taken
    causes = list(offer.events.values_list("from_status", "to_status", "cause"))
    assert causes == [("", "pending", "waitlist"), ("pending", "cancelled", "expiry_job")]


def test_an_offer_past_its_hold_reads_as_lapsed_before_any_job_runs(client, staff, offered):
    slot, ada, bo, cy = offered
    Reservation.objects.filter(pk=ada.offer_id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    table = rows(client.get(ENTRIES, {"status__exact": "offered"}))

    assert table["Ada"]["place_or_status"] == "Let the offer lapse (release pending)"
    assert table["Ada"]["offer_link"] == f"{str(ada.offer.token)[:8]}: lapsed"
