"""The admin index's warnings about expiry."""

from django.contrib.auth import get_user_model


def test_the_admin_index_warns_when_no_scheduler_reports(client, db):
    client.force_login(get_user_model().objects.create_superuser("boss", password="pw"))

    html = client.get("/admin/").content.decode()

    assert "No expiry scheduler has reported in" in html
