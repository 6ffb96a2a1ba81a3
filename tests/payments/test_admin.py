"""Staff see the payments whose refund is due and mark them refunded."""

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from apps.payments.models import Payment

from ..factories import reserve

pytestmark = pytest.mark.django_db

RESERVATIONS = "/admin/reservations/reservation/"
PAYMENTS = "/admin/payments/payment/"


@pytest.fixture
def staff(client):
    user = get_user_model().objects.create_user("desk", password="pw", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(
            codename__in=[
                "view_reservation",
                "change_reservation",
                "view_payment",
                "change_payment",
            ]
        )
    )
    client.force_login(user)
    return user


def act(client, path, action, objects, **data):
    return client.post(
        path, {"action": action, ACTION_CHECKBOX_NAME: [o.pk for o in objects], **data}, follow=True
    )


def refunds_due(client) -> list[Payment]:
    return list(client.get(PAYMENTS, {"refund": "due"}).context["cl"].result_list)


def test_staff_see_refunds_due_and_mark_them_refunded(client, staff):
    cancelled = reserve()
    act(client, RESERVATIONS, "cancel", [cancelled])
    act(client, RESERVATIONS, "mark_paid", [cancelled], apply="1", payment_reference="BANK-9")
    payment = Payment.objects.get(reference="BANK-9")
    assert refunds_due(client) == [payment]

    done = act(client, PAYMENTS, "mark_refunded", [payment])

    payment.refresh_from_db()
    assert [str(m) for m in done.context["messages"]] == ["1 payment(s) marked refunded."]
    assert payment.refunded_at is not None and payment.refunded_by == staff
    assert refunds_due(client) == []


def test_a_payment_with_no_refund_due_is_skipped_and_left_as_it_is(client, staff):
    reservation = reserve()
    act(client, RESERVATIONS, "mark_paid", [reservation], apply="1", payment_reference="BANK-1")
    applied = Payment.objects.get(reference="BANK-1")

    response = act(client, PAYMENTS, "mark_refunded", [applied])

    applied.refresh_from_db()
    assert [str(m) for m in response.context["messages"]] == [
        "1 payment(s) skipped: no refund was due, or it was already made."
    ]
    assert (applied.outcome, applied.refunded_at, applied.refunded_by) == ("applied", None, None)
