"""Days at the ends of the calendar are refused plainly, never a server error."""

import pytest

from apps.rooms.models import Closure

pytestmark = pytest.mark.django_db

FAR = ["9999-12-31", "0001-01-01", "2200-01-01"]


@pytest.mark.parametrize("day", FAR)
def test_the_day_sheet_of_a_day_out_of_reach_is_not_found(admin_client, day):
    assert admin_client.get(f"/staff/day/{day}/").status_code == 404
    picked = admin_client.get("/staff/day/", {"date": day}, follow=True)
    assert picked.status_code == 404


@pytest.mark.parametrize(
    "start,end",
    [("9999-12-20", "9999-12-31"), ("0001-01-01", "0001-01-02"), ("2026-01-01", "2200-01-01")],
)
def test_a_report_of_days_out_of_reach_is_a_form_error(admin_client, start, end):
    page = admin_client.get("/admin/reports/occupancy/", {"start": start, "end": end})
    csv = admin_client.get(
        "/admin/reports/occupancy/", {"start": start, "end": end, "format": "csv"}
    )

    assert page.status_code == 200
    assert "Pick a date within ten years of today." in page.content.decode()
    assert csv.status_code == 400


@pytest.mark.parametrize("first", ["9999-12-31", "0001-01-01"])
def test_a_closure_out_of_reach_is_a_form_error(admin_client, first):
    response = admin_client.post(
        "/admin/rooms/closure/add/",
        {
            "room": "",
            "first_day": first,
            "last_day": "",
            "from_time": "",
            "until_time": "",
            "reason": "x",
        },
    )

    assert response.status_code == 200
    assert "Pick a date within ten years of today." in response.content.decode()
    assert not Closure.objects.exists()
