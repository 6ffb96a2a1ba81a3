import pytest


@pytest.fixture
def api(client):
    """The JSON API as a client sees it; ``key`` sends an Idempotency-Key."""

    class Api:
        def get(self, path):
            return client.get(f"/api{path}")

        def post(self, path, body=None, *, key=None):
            headers = {} if key is None else {"Idempotency-Key": key}
            return client.post(
                f"/api{path}", body or {}, content_type="application/json", headers=headers
            )

    return Api()


def booking(slot, **overrides) -> dict:
    return {
        "slot_id": slot.pk,
        "customer_name": "John Doe",
        "customer_email": "john@example.com",
        "party_size": 3,
        **overrides,
    }
