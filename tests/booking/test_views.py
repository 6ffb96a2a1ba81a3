"""The booking pages without a browser: each field error, idempotent submissions, refusals."""

import uuid
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apps.booking.views import slot_key
from apps.reservations.models import Reservation
from apps.reservations.text import NO_CONTROL_CHARACTERS

from ..factories import RoomFactory, TimeSlotFactory, reserve

pytestmark = pytest.mark.django_db


@pytest.fixture
def slot():
    room = RoomFactory(name="The Lost Tomb", slug="tomb", min_players=2, max_players=4)
    return TimeSlotFactory(room=room)


def reserve_url(slot) -> str:
    return f"/rooms/{slot.room.slug}/{slot_key(slot)}/reserve/"


def booking(**changes):
    return {
        "customer_name": "John Doe",
        "customer_email": "john@example.com",
        "customer_phone": "",
        "party_size": "3",
        "request_key": "",
        **changes,
    }


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"customer_name": ""}, "customer_name", "This field is required."),
        ({"customer_email": "john-at-example"}, "customer_email", "Enter a valid email address."),
        ({"party_size": "three"}, "party_size", "Enter a whole number."),
        ({"party_size": "5"}, "party_size", "This room takes 2 to 4 players."),
        ({"party_size": "1"}, "party_size", "This room takes 2 to 4 players."),
        ({"customer_name": "John\x07"}, "customer_name", NO_CONTROL_CHARACTERS),
        ({"customer_phone": "1" * 40}, "customer_phone", "Ensure this value has at most 32"),
    ],
)
def test_each_field_error_shows_beside_its_field_and_keeps_what_was_typed(
    client, slot, change, field, message
):
    data = booking(**change)

    response = client.post(reserve_url(slot), data)

    assert response.status_code == 400
    html = response.content.decode()
    assert f'id="id_{field}_error"' in html
    assert message in html
    assert response.context["form"].errors[field][0].startswith(message)
    assert 'value="john@example.com"' in html or field == "customer_email"
    assert not Reservation.objects.exists()


def issued_key(client, slot) -> str:
    return client.get(reserve_url(slot)).context["form"].initial["request_key"]


def test_a_resubmitted_form_finds_the_first_reservation(client, slot):
    data = booking(request_key=issued_key(client, slot))

    first = client.post(reserve_url(slot), data)
    again = client.post(reserve_url(slot), data)

    reservation = Reservation.objects.get()
    assert first["Location"] == again["Location"] == f"/reservations/{reservation.token}/"
    assert reservation.request_key is not None


def test_someone_elses_form_key_does_not_open_their_reservation(client, slot):
    other_slot = TimeSlotFactory(room=slot.room)
    key = issued_key(client, slot)
    client.post(reserve_url(slot), booking(request_key=key))

    stranger = Client()
    response = stranger.post(
        reserve_url(other_slot), booking(request_key=key, customer_name="Mallory")
    )
    again = stranger.post(
        reserve_url(slot), booking(request_key=key, customer_name="Mallory"), follow=True
    )

    mallory = Reservation.objects.get(customer_name="Mallory")
    assert response["Location"] == f"/reservations/{mallory.token}/"  # a new one of their own
    assert mallory.request_key is None
    assert "this slot was just taken" in again.content.decode()  # not John's page


def test_the_same_browser_in_two_tabs_is_shown_its_own_hold(client, slot):
    first_tab, second_tab = issued_key(client, slot), issued_key(client, slot)
    client.post(reserve_url(slot), booking(request_key=first_tab))

    response = client.post(reserve_url(slot), booking(request_key=second_tab), follow=True)

    assert "This slot is already yours." in response.content.decode()
    assert Reservation.objects.count() == 1


def test_a_slot_that_has_started_says_so(client):
    slot = TimeSlotFactory(starts_at=timezone.now() - timedelta(minutes=5))

    response = client.get(reserve_url(slot), follow=True)

    assert "This time has already started" in response.content.decode()


def test_a_day_outside_the_two_weeks_shown_says_so(client, slot):
    response = client.get(f"/rooms/{slot.room.slug}/?date=2099-01-01", follow=True)

    assert "Pick a day within the next two weeks." in response.content.decode()
    assert response.context["day"] == timezone.localdate(slot.starts_at)  # first day to book


@pytest.mark.parametrize("key", ["20261130T10000Z", "2026113０T100000Z", "20261130T100000"])
def test_only_the_exact_slot_key_names_a_slot(client, slot, key):
    assert client.get(f"/rooms/{slot.room.slug}/{key}/reserve/").status_code == 404


@pytest.mark.parametrize("method", ["head", "options", "put", "delete"])
def test_the_reserve_page_takes_get_and_post_only(client, slot, method):
    assert getattr(client, method)(reserve_url(slot)).status_code == 405


def test_a_slot_taken_meanwhile_shows_the_current_slots_with_a_message(client, slot):
    reserve(slot)

    response = client.post(reserve_url(slot), booking(), follow=True)

    assert response.redirect_chain[-1][0].startswith(f"/rooms/{slot.room.slug}/?date=")
    assert "this slot was just taken" in response.content.decode()
    assert Reservation.objects.count() == 1


def test_the_room_page_shows_a_lapsed_hold_as_available(client, slot):
    reservation = reserve(slot)
    Reservation.objects.filter(pk=reservation.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    response = client.get(f"/rooms/{slot.room.slug}/?date={timezone.localdate(slot.starts_at)}")

    rows = {row["key"]: row["state"] for row in response.context["rows"]}
    assert rows[slot_key(slot)] == "available"


def test_times_are_shown_in_the_venue_time_zone_with_its_name(client, slot, settings):
    settings.TIME_ZONE = "Europe/Berlin"

    html = client.get(reserve_url(slot)).content.decode()

    local = timezone.localtime(slot.starts_at)
    assert f"{local:%H:%M} {local.tzname()}" in html
    assert "Times in Europe/Berlin" in html


@pytest.mark.parametrize(
    "path",
    ["/reservations/{token}/pay/", "/reservations/{token}/cancel/", "/reservations/{token}/keep/"],
)
def test_actions_take_posts_only(client, slot, path):
    reservation = reserve(slot)

    assert client.get(path.format(token=reservation.token)).status_code == 405


def test_every_form_needs_its_csrf_token(slot):
    strict = Client(enforce_csrf_checks=True)
    reservation = reserve(slot)

    assert strict.post(reserve_url(slot), booking()).status_code == 403
    assert strict.post(f"/reservations/{reservation.token}/pay/").status_code == 403
    assert Reservation.objects.get().status == "pending"


@pytest.mark.parametrize("token", [str(uuid.uuid4()), "123", "not-a-token"])
def test_unknown_tokens_are_404(client, token):
    assert client.get(f"/reservations/{token}/").status_code == 404
    assert client.post(f"/reservations/{token}/pay/").status_code == 404


def test_an_unknown_slot_is_404(client, slot):
    assert client.get(f"/rooms/{slot.room.slug}/20000101T100000Z/reserve/").status_code == 404
    assert client.get(f"/rooms/{slot.room.slug}/yesterday/reserve/").status_code == 404


def test_refusals_show_as_messages_and_change_nothing(client, slot, settings):
    settings.CUSTOMER_CANCEL_HOURS = 24 * 365  # every game is too close to cancel online
    reservation = reserve(slot)
    client.post(f"/reservations/{reservation.token}/pay/")

    response = client.post(f"/reservations/{reservation.token}/cancel/", follow=True)

    assert "can no longer be cancelled online" in response.content.decode()
    assert Reservation.objects.get().status == "paid"


def test_the_form_refuses_a_hold_past_the_limit_with_429(client, settings):
    settings.MAX_PENDING_HOLDS_PER_EMAIL = 1
    room = RoomFactory(slug="limits", min_players=2, max_players=4)
    first, second = TimeSlotFactory(room=room), TimeSlotFactory(room=room)
    client.post(reserve_url(first), booking())

    response = client.post(reserve_url(second), booking())

    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert "are waiting for" in response.content.decode()
    assert Reservation.objects.count() == 1


def test_the_pay_button_starts_the_payment_window_and_records_the_payment(client, slot, settings):
    settings.PAYMENT_WINDOW_SECONDS = 300
    reservation = reserve(slot)

    client.post(f"/reservations/{reservation.token}/pay/")

    reservation.refresh_from_db()
    assert reservation.status == "paid" and reservation.checkout_started_at is not None
    assert reservation.payments.get().outcome == "applied"
