"""Staff change reservations through the admin's actions, which call the services."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from apps.payments.models import Payment
from apps.reservations.models import Reservation, ReservationEvent
from apps.reservations.services import reservation_create, reservation_extend_hold
from apps.rooms.models import TimeSlot

from ..factories import TimeSlotFactory, reserve

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/reservations/reservation/"


@pytest.fixture
def staff(client):
    user = get_user_model().objects.create_user("desk", password="pw", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_reservation", "change_reservation"])
    )
    client.force_login(user)
    return user


def act(client, action, reservations, **data):
    return client.post(
        CHANGELIST,
        {"action": action, ACTION_CHECKBOX_NAME: [r.pk for r in reservations], **data},
        follow=True,
    )


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_staff_find_reservations_by_email_and_token(client, staff):
    reservation = reserve()
    other = reservation_create(
        time_slot_id=TimeSlotFactory().pk,
        customer_name="Jane Roe",
        customer_email="jane@example.com",
        party_size=2,
    )

    by_email = client.get(CHANGELIST, {"q": "john@example.com"})
    by_token = client.get(CHANGELIST, {"q": str(other.token)})

    assert list(by_email.context["cl"].result_list) == [reservation]
    assert list(by_token.context["cl"].result_list) == [other]
    assert "left" in by_email.content.decode()  # time left is shown


def test_mark_paid_asks_for_a_reference_then_pays(client, staff):
    reservation = reserve()

    asked = act(client, "mark_paid", [reservation])
    assert asked.templates[0].name == "admin/action_form.html"
    assert Reservation.objects.get(pk=reservation.pk).status == "pending"

    done = act(client, "mark_paid", [reservation], apply="1", payment_reference="BANK-42")

    reservation.refresh_from_db()
    assert (reservation.status, reservation.payment_reference) == ("paid", "BANK-42")
    assert messages_of(done) == ["1 reservation(s) marked paid."]
    event = reservation.events.last()
    assert (event.cause, event.staff_user) == (ReservationEvent.Cause.STAFF, staff)


def test_cancel_by_staff_releases_the_slot(client, staff):
    reservation = reserve()

    act(client, "cancel", [reservation])

    reservation.refresh_from_db()
    assert (reservation.status, reservation.cancellation_reason) == ("cancelled", "staff")
    assert TimeSlot.objects.get(pk=reservation.time_slot_id).status == "active"


def test_extend_hold_moves_expires_at(client, staff):
    reservation = reserve()
    before = reservation.expires_at

    act(client, "extend_hold", [reservation], apply="1", minutes="15")

    reservation.refresh_from_db()
    assert reservation.expires_at == before + timedelta(minutes=15)


def test_a_refused_action_says_why_and_changes_nothing(client, staff):
    paid = reserve()
    act(client, "mark_paid", [paid], apply="1", payment_reference="BANK-1")
    cancelled = reserve()
    act(client, "cancel", [cancelled])

    response = act(client, "extend_hold", [paid], apply="1", minutes="10")
    cancelled_response = act(
        client, "mark_paid", [cancelled], apply="1", payment_reference="BANK-2"
    )

    assert messages_of(response) == [f"John Doe ({paid.token}): This reservation is already paid."]
    assert messages_of(cancelled_response) == [
        f"John Doe ({cancelled.token}): This reservation is cancelled."
    ]
    assert Reservation.objects.get(pk=paid.pk).payment_reference == "BANK-1"
    cancelled.refresh_from_db()
    assert (cancelled.status, cancelled.payment_reference) == ("cancelled", "")
    assert Payment.objects.get(reference="BANK-2").outcome == "refund_due"  # recorded all the same


def test_marking_a_lapsed_hold_paid_applies_it_late_while_the_slot_is_free(client, staff):
    lapsed = reserve()
    Reservation.objects.filter(pk=lapsed.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    act(client, "mark_paid", [lapsed], apply="1", payment_reference="BANK-3")

    lapsed.refresh_from_db()
    assert lapsed.status == "paid"
    assert Payment.objects.get(reference="BANK-3").outcome == "applied_late"


def test_the_reservation_page_shows_its_history_read_only(client, staff):
    reservation = reserve()
    act(client, "cancel", [reservation])

    page = client.get(f"{CHANGELIST}{reservation.pk}/change/")

    assert page.status_code == 200
    html = page.content.decode()
    # The made and the cancelled events, read-only, for staff who may see the reservation.
    causes = re.findall(r'<td class="field-cause">\s*<p>([^<]*)</p>', html)
    assert causes == ["Customer", "Staff"]
    assert 'name="_save"' not in html


def test_anonymous_users_are_sent_to_the_login(client):
    reservation = reserve()

    response = client.post(CHANGELIST, {"action": "cancel", ACTION_CHECKBOX_NAME: [reservation.pk]})

    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert Reservation.objects.get(pk=reservation.pk).status == "pending"


def test_staff_without_the_change_permission_cannot_act(client):
    viewer = get_user_model().objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_reservation"))
    client.force_login(viewer)
    reservation = reserve()

    response = client.post(CHANGELIST, {"action": "cancel", ACTION_CHECKBOX_NAME: [reservation.pk]})

    assert response.status_code in (200, 302, 403)
    assert Reservation.objects.get(pk=reservation.pk).status == "pending"


def test_non_staff_users_are_refused(client):
    client.force_login(get_user_model().objects.create_user("customer", password="pw"))
    reservation = reserve()

    response = client.post(CHANGELIST, {"action": "cancel", ACTION_CHECKBOX_NAME: [reservation.pk]})

    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert Reservation.objects.get(pk=reservation.pk).status == "pending"


def test_the_admin_shows_times_in_the_venue_zone_and_names_it(client, staff, settings):
    settings.TIME_ZONE = "Europe/Berlin"
    staff.user_permissions.add(Permission.objects.get(codename="view_reservationevent"))
    # 25 October 2026 in Berlin: 03:00 CEST -> 02:00 CET. Reserved at 02:50 CEST, for 10:00 CET.
    slot = TimeSlotFactory(starts_at=datetime(2026, 10, 25, 9, tzinfo=UTC))
    now = datetime(2026, 10, 25, 0, 50, tzinfo=UTC)
    reservation = reservation_create(
        time_slot_id=slot.pk,
        customer_name="John Doe",
        customer_email="john@example.com",
        party_size=3,
        now=now,
        hold_seconds=30 * 60,
    )
    reservation_extend_hold(reservation=reservation, by=timedelta(minutes=30), now=now)

    listed = client.get(CHANGELIST).content.decode()
    page = client.get(f"{CHANGELIST}{reservation.pk}/change/").content.decode()

    assert "Times in Europe/Berlin" in listed and "Times in Europe/Berlin" in page
    assert '<td class="field-slot_time">2026-10-25 10:00 CET</td>' in listed
    assert f"{slot.room} at 2026-10-25 10:00 CET" in page  # the slot
    assert "new → pending by customer at 2026-10-25 02:50:00 CEST" in page  # its history
    assert "Hold extended by 30 min to 2026-10-25T02:50:00+01:00" in page  # the second 02:50
