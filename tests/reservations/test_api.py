"""The reservations API: shapes, status codes, error objects; a refused request changes nothing."""

from datetime import timedelta
from uuid import uuid4

import pytest
from django.test import RequestFactory
from django.utils import timezone

from apps.payments.models import Payment
from apps.reservations.models import Reservation
from apps.rooms.models import TimeSlot
from config.client_address import client_address

from ..factories import RoomFactory, TimeSlotFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(client):
    class Api:
        def get(self, path):
            return client.get(f"/api{path}")

        def post(self, path, body=None, **extra):
            return client.post(f"/api{path}", body or {}, content_type="application/json", **extra)

    return Api()


def booking(slot, **overrides):
    return {
        "slot_id": slot.pk,
        "customer_name": "John Doe",
        "customer_email": "john@example.com",
        "party_size": 3,
        **overrides,
    }


def nothing_changed(slot):
    return not Reservation.objects.exists() and TimeSlot.objects.get(pk=slot.pk).status == "active"


def test_reserve_returns_201_with_the_hold(api, settings):
    settings.RESERVATION_HOLD_SECONDS = 300
    slot = TimeSlotFactory()

    response = api.post("/reservations/", booking(slot))

    assert response.status_code == 201
    body = response.json()
    reservation = Reservation.objects.get()
    assert body["token"] == str(reservation.token)
    assert body["status"] == "pending"
    assert body["seconds_left"] in (299, 300)
    assert body["slot"]["id"] == slot.pk
    assert body["slot"]["room"]["slug"] == slot.room.slug
    assert body["customer_email"] == "john@example.com"
    assert "id" not in body  # the token is the only public identifier


def test_reserving_a_taken_slot_is_409_slot_taken(api):
    slot = TimeSlotFactory()
    api.post("/reservations/", booking(slot))

    response = api.post("/reservations/", booking(slot, customer_name="Jane Roe"))

    assert response.status_code == 409
    assert response.json() == {
        "error": {"code": "slot_taken", "message": "This time slot was just taken by someone else."}
    }
    assert Reservation.objects.count() == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"customer_email": "not-an-email"}, "customer_email"),
        ({"customer_name": "   "}, "customer_name"),
        ({"customer_name": "x" * 101}, "customer_name"),
        ({"party_size": 0}, "party_size"),
        ({"party_size": "three"}, "party_size"),
        ({"slot_id": None}, "slot_id"),
    ],
)
def test_invalid_fields_are_400_with_field_errors(api, change, field):
    slot = TimeSlotFactory()

    response = api.post("/reservations/", booking(slot, **change))

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert list(error["fields"]) == [field]
    assert nothing_changed(slot)


def test_a_party_too_large_for_the_room_is_400_on_party_size(api):
    slot = TimeSlotFactory(room=RoomFactory(min_players=2, max_players=4))

    response = api.post("/reservations/", booking(slot, party_size=5))

    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"party_size": ["This room takes 2 to 4 players."]}
    assert nothing_changed(slot)


def test_malformed_json_is_400(api, client):
    slot = TimeSlotFactory()

    response = client.post("/api/reservations/", "{not json", content_type="application/json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed"
    assert nothing_changed(slot)


def test_an_unknown_slot_is_404(api, db):
    response = api.post("/reservations/", {**booking(TimeSlotFactory()), "slot_id": 999999})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "slot_not_found"


@pytest.mark.parametrize("token", [str(uuid4()), "not-a-uuid", "1"])
def test_unknown_tokens_are_404(api, token):
    for response in (
        api.get(f"/reservations/{token}/"),
        api.post(f"/reservations/{token}/pay/", {"payment_reference": "PAY-1"}),
        api.post(f"/reservations/{token}/cancel/"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_show_pay_and_cancel_by_token(api):
    paid_slot, cancelled_slot = TimeSlotFactory(), TimeSlotFactory()
    paid = api.post("/reservations/", booking(paid_slot)).json()["token"]
    cancelled = api.post("/reservations/", booking(cancelled_slot)).json()["token"]

    pay = api.post(f"/reservations/{paid}/pay/", {"payment_reference": "PAY-1"})
    cancel = api.post(f"/reservations/{cancelled}/cancel/")

    assert (pay.status_code, pay.json()["status"], pay.json()["seconds_left"]) == (200, "paid", 0)
    assert (cancel.status_code, cancel.json()["status"]) == (200, "cancelled")
    assert cancel.json()["cancellation_reason"] == "customer"
    assert api.get(f"/reservations/{paid}/").json() == pay.json()
    assert TimeSlot.objects.get(pk=cancelled_slot.pk).status == "active"


@pytest.mark.parametrize(
    ("first", "then", "code"),
    [
        ("pay", "pay", "already_paid"),
        ("cancel", "pay", "already_cancelled"),
        ("cancel", "cancel", "already_cancelled"),
    ],
)
def test_conflicting_actions_are_409_with_a_code(api, first, then, code):
    token = api.post("/reservations/", booking(TimeSlotFactory())).json()["token"]
    body = {"payment_reference": "PAY-1"}
    api.post(f"/reservations/{token}/{first}/", body)
    before = api.get(f"/reservations/{token}/").json()

    response = api.post(f"/reservations/{token}/{then}/", {"payment_reference": "PAY-2"})

    assert response.status_code == 409
    assert response.json()["error"]["code"] == code
    assert api.get(f"/reservations/{token}/").json() == before


def test_paying_after_the_hold_while_the_slot_is_free_applies_it_late(api):
    slot = TimeSlotFactory()
    token = api.post("/reservations/", booking(slot)).json()["token"]
    Reservation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    response = api.post(f"/reservations/{token}/pay/", {"payment_reference": "PAY-1"})

    assert (response.status_code, response.json()["status"]) == (200, "paid")
    assert TimeSlot.objects.get(pk=slot.pk).status == "reserved"


def test_paying_after_the_hold_when_the_slot_is_gone_is_409_and_a_refund(api):
    slot = TimeSlotFactory()
    token = api.post("/reservations/", booking(slot)).json()["token"]
    Reservation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    api.post("/reservations/", booking(slot, customer_name="Jane Roe"))  # takes the slot over

    response = api.post(f"/reservations/{token}/pay/", {"payment_reference": "PAY-1"})

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "hold_expired"
    assert api.get(f"/reservations/{token}/").json()["cancellation_reason"] == "expired"
    assert Payment.objects.get(reference="PAY-1").outcome == "refund_due"


def test_a_lapsed_hold_reads_as_expired_before_its_job_runs(api):
    token = api.post("/reservations/", booking(TimeSlotFactory())).json()["token"]
    Reservation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    body = api.get(f"/reservations/{token}/").json()

    assert (body["status"], body["cancellation_reason"], body["seconds_left"]) == (
        "cancelled",
        "expired",
        0,
    )


def test_pay_needs_a_payment_reference(api):
    token = api.post("/reservations/", booking(TimeSlotFactory())).json()["token"]

    response = api.post(f"/reservations/{token}/pay/", {"payment_reference": ""})

    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["payment_reference"]
    assert Reservation.objects.get().status == "pending"


def test_the_openapi_document_describes_every_endpoint(api):
    response = api.get("/openapi.json")

    assert response.status_code == 200
    paths = response.json()["paths"]
    assert set(paths) == {
        "/api/rooms/",
        "/api/rooms/{slug}/slots/",
        "/api/reservations/",
        "/api/reservations/{token}/",
        "/api/reservations/{token}/pay/",
        "/api/reservations/{token}/cancel/",
        "/api/reservations/{token}/move/",
        "/api/reservations/{token}/checkout/",
        "/api/reservations/{token}/payment/",
        "/api/reservations/{token}/payment/authorise/",
        "/api/reservations/{token}/payment/check/",
        "/api/bookings/find/",
        "/api/waitlist/",
        "/api/waitlist/{token}/",
        "/api/waitlist/{token}/leave/",
    }
    assert set(paths["/api/reservations/"]["post"]["responses"]) == {
        "201",
        "400",
        "404",
        "409",
        "422",  # idempotency_key_reused
        "429",
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"party_size": "3"}, "party_size"),  # a string is not a number
        ({"party_size": 3.0}, "party_size"),
        ({"slot_id": True}, "slot_id"),  # true is not an id
        ({"customer_name": "John\x00Doe"}, "customer_name"),
        ({"customer_name": "John\u200fDoe\x07"}, "customer_name"),
        ({"status": "paid"}, "status"),  # an unknown field is an error, not ignored
    ],
)
def test_input_is_taken_strictly(api, change, field):
    slot = TimeSlotFactory()

    response = api.post("/reservations/", booking(slot, **change))

    assert response.status_code == 400, response.json()
    assert field in response.json()["error"]["fields"]
    assert nothing_changed(slot)


def test_a_body_of_several_megabytes_is_refused_with_413(client):
    slot = TimeSlotFactory()
    body = '{"customer_name": "' + "a" * 3_000_000 + '"}'

    response = client.post("/api/reservations/", body, content_type="application/json")

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    assert nothing_changed(slot)


def test_only_the_canonical_token_names_a_reservation(api):
    token = api.post("/reservations/", booking(TimeSlotFactory())).json()["token"]

    assert api.get(f"/reservations/{token}/").status_code == 200
    assert api.get(f"/reservations/{token.upper()}/").status_code == 200
    for variant in (token.replace("-", ""), f"urn:uuid:{token}", f"{{{token}}}"):
        assert api.get(f"/reservations/{variant}/").status_code == 404


# Hold limits ---------------------------------------------------------------


@pytest.fixture
def limits(settings):
    settings.MAX_PENDING_HOLDS_PER_EMAIL = 2
    settings.MAX_PENDING_HOLDS_PER_ADDRESS = 3


def test_a_third_hold_for_one_email_is_429_with_retry_after(api, limits):
    room = RoomFactory()
    slots = [TimeSlotFactory(room=room) for _ in range(3)]
    api.post("/reservations/", booking(slots[0], customer_email="john@example.com"))
    api.post(
        "/reservations/",
        booking(slots[1], customer_email="JOHN@example.com"),
        REMOTE_ADDR="10.0.0.2",
    )

    response = api.post(
        "/reservations/",
        booking(slots[2], customer_email="John@Example.com"),
        REMOTE_ADDR="10.0.0.3",
    )

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "too_many_holds"
    assert 0 < int(response["Retry-After"]) <= 1800
    assert Reservation.objects.count() == 2


def test_the_address_limit_counts_the_connection_not_a_forged_header(api, limits):
    room = RoomFactory()
    slots = [TimeSlotFactory(room=room) for _ in range(4)]
    for index in range(3):
        api.post(
            "/reservations/",
            booking(slots[index], customer_email=f"c{index}@example.com"),
            HTTP_X_FORWARDED_FOR=f"203.0.113.{index}",
        )

    response = api.post(
        "/reservations/",
        booking(slots[3], customer_email="c9@example.com"),
        HTTP_X_FORWARDED_FOR="198.51.100.7",
    )

    assert response.status_code == 429
    assert Reservation.objects.count() == 3
    assert set(Reservation.objects.values_list("client_address", flat=True)) == {"127.0.0.1"}


def test_forwarded_addresses_are_believed_only_from_trusted_proxies(settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    factory = RequestFactory()

    def address(remote, forwarded):
        return client_address(factory.get("/", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded))

    assert address("10.1.2.3", "203.0.113.9") == "203.0.113.9"
    assert address("10.1.2.3", "198.51.100.1, 203.0.113.9, 10.9.9.9") == "203.0.113.9"
    assert address("192.0.2.1", "203.0.113.9") == "192.0.2.1"  # not a trusted proxy


def test_four_addresses_of_one_ipv6_64_are_one_client(api, limits):
    """An IPv6 host may use any address of its /64: the limit counts the network."""
    slots = [TimeSlotFactory() for _ in range(5)]
    codes = [
        api.post(
            "/reservations/",
            booking(slots[index], customer_email=f"v{index}@example.com"),
            REMOTE_ADDR=f"2001:db8:1:2::{index + 1:x}",
        ).status_code
        for index in range(4)
    ]
    elsewhere = api.post(
        "/reservations/",
        booking(slots[4], customer_email="v9@example.com"),
        REMOTE_ADDR="2001:db8:1:3::1",  # the next /64: another client
    )

    assert codes == [201, 201, 201, 429]
    assert elsewhere.status_code == 201
    assert list(Reservation.objects.order_by("pk").values_list("client_address", flat=True)) == [
        "2001:db8:1:2::"
    ] * 3 + ["2001:db8:1:3::"]


def test_ipv4_clients_are_counted_by_address_however_written(api, limits):
    slots = [TimeSlotFactory() for _ in range(5)]
    for index, remote in enumerate(["192.0.2.1", "::ffff:192.0.2.1", "192.0.2.1"]):
        response = api.post(
            "/reservations/",
            booking(slots[index], customer_email=f"f{index}@example.com"),
            REMOTE_ADDR=remote,
        )
        assert response.status_code == 201
    neighbour = api.post(
        "/reservations/",
        booking(slots[3], customer_email="f8@example.com"),
        REMOTE_ADDR="192.0.2.2",  # the next address is someone else
    )
    fourth = api.post(
        "/reservations/",
        booking(slots[4], customer_email="f9@example.com"),
        REMOTE_ADDR="::ffff:192.0.2.1",
    )

    assert neighbour.status_code == 201
    assert fourth.status_code == 429


def test_the_ipv6_prefix_is_a_setting(settings):
    factory = RequestFactory()
    settings.HOLD_LIMIT_IPV6_PREFIX = 48
    request = factory.get("/", REMOTE_ADDR="2001:db8:1:2:3:4:5:6")
    assert client_address(request) == "2001:db8:1::"
    settings.HOLD_LIMIT_IPV6_PREFIX = 128
    assert client_address(request) == "2001:db8:1:2:3:4:5:6"


def test_a_6to4_host_is_its_ipv4_client_however_many_64s_it_rotates_through(api, limits):
    slots = [TimeSlotFactory() for _ in range(4)]
    codes = [
        api.post(
            "/reservations/",
            booking(slots[index], customer_email=f"s{index}@example.com"),
            REMOTE_ADDR=f"2002:c000:201:{index + 1:x}::1",  # 192.0.2.1's 6to4 range
        ).status_code
        for index in range(4)
    ]

    assert codes == [201, 201, 201, 429]
    assert set(Reservation.objects.values_list("client_address", flat=True)) == {"192.0.2.1"}


def test_forwarded_addresses_with_a_port_are_the_clients(settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    factory = RequestFactory()

    def address(forwarded):
        return client_address(
            factory.get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=forwarded)
        )

    assert address("[2001:db8:1:2::7]:51000") == "2001:db8:1:2::"
    assert address("198.51.100.7:51000") == "198.51.100.7"
