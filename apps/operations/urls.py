from django.urls import path, register_converter

from . import views


class IsoDateConverter:
    """A day as ``2026-12-04``; the view refuses impossible dates (404)."""

    regex = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: object) -> str:
        return str(value)


register_converter(IsoDateConverter, "isodate")

app_name = "operations"

urlpatterns = [
    path("day/", views.day_sheet, name="day_sheet_today"),
    path("day/<isodate:day>/", views.day_sheet, name="day_sheet"),
    path(
        "reservations/<int:pk>/attendance/",
        views.reservation_attendance,
        name="reservation_attendance",
    ),
]
