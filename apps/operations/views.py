"""
Staff and operators' pages: /healthz for load balancers, /metrics for the
operator's Prometheus, the day sheet for the venue's staff, the owner's
occupancy report.

Interfaces: they parse input, call one selector or service and present the result.
"""

import csv
import hmac
import ipaddress
from collections.abc import Callable
from datetime import date, timedelta
from decimal import Decimal
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from apps.messaging.selectors import outbox_backlog
from apps.reservations import errors
from apps.reservations.models import Reservation
from apps.reservations.services import CHECK_IN_OPENS, reservation_attendance_set
from apps.rooms.selectors import DATE_OUT_OF_RANGE, day_within_reach
from config.client_address import client_ip
from escape_rooms_backend import timeline

from .forms import ReportRangeForm
from .metrics import metrics_exposition
from .reports import OccupancyReport, occupancy_report_get, report_weeks_default
from .selectors import (
    day_sheet_get,
    heartbeat_age,
    heartbeat_stale_after,
    latest_heartbeat,
    outbox_state,
    running_schedulers,
)

# The checks that decide 200 or 503. The outbox's is reported beside them
# only: a mail server outage must not take the web tier out of a load balancer.
HEALTH_CHECKS = ("database", "job_store", "scheduler")


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """
    Health for load balancers and watchdogs: 200 when healthy, 503 otherwise.

    Unhealthy: the database or the job store does not answer, or no running
    scheduler has sent a heartbeat within two sweep intervals. The outbox's
    backlog is reported (``messages``, and the check ``outbox``) but never
    makes it unhealthy. A few small queries; cheap enough to call every few
    seconds.
    """
    now = timezone.now()
    checks: dict = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
        heartbeat = latest_heartbeat()
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
        heartbeat = None
    try:
        timeline.job_store_next_run_time()
        checks["job_store"] = "ok"
    except Exception as exc:
        checks["job_store"] = f"error: {type(exc).__name__}"
    age = heartbeat_age(heartbeat, now)
    try:
        standbys = [f"{b.hostname}:{b.pid}" for b in running_schedulers(now, role="standby")]
    except Exception:
        standbys = []
    fresh = age is not None and age <= heartbeat_stale_after()
    checks["scheduler"] = "ok" if fresh else ("no heartbeat" if age is None else "stale")
    messages = None
    try:
        backlog = outbox_backlog()
        checks["outbox"] = outbox_state(backlog, now)
        oldest = backlog.oldest_age_seconds(now)
        messages = {
            "pending": backlog.pending,
            "failing": backlog.failing,
            "failed": backlog.failed,
            "oldest_pending_age_seconds": None if oldest is None else round(oldest, 3),
        }
    except Exception as exc:
        checks["outbox"] = f"error: {type(exc).__name__}"
    healthy = all(checks[name] == "ok" for name in HEALTH_CHECKS)
    body = {
        "status": "ok" if healthy else "unhealthy",
        "checks": checks,
        "heartbeat_age_seconds": None if age is None else round(age, 3),
        "heartbeat_stale_after_seconds": heartbeat_stale_after(),
        "runner": None if heartbeat is None else f"{heartbeat.hostname}:{heartbeat.pid}",
        "standbys": standbys,
        "messages": messages,
    }
    return JsonResponse(body, status=200 if healthy else 503)


REPORT_PERMISSION = "reservations.view_reservation"
NOTHING = Decimal("0.00")


@require_GET
def occupancy_report(request: HttpRequest) -> HttpResponse:
    """
    The owner's report, an admin page: occupancy and revenue per room and week.

    Wrapped in ``admin.site.admin_view`` (config/urls.py), which sends anyone
    not logged in as staff to the admin's login; staff without
    ``reservations.view_reservation`` get 403. ``?start=&end=`` choose the
    weeks (by default the last eight, this one and the next four);
    ``format=csv`` downloads the same table, with 400 for a bad range.
    """
    if not request.user.has_perm(REPORT_PERMISSION):
        raise PermissionDenied
    start, end = report_weeks_default(timezone.localdate())
    data: dict[str, object] = {"start": start, "end": end}
    data.update({name: request.GET[name] for name in ("start", "end") if request.GET.get(name)})
    form = ReportRangeForm(data)
    report = occupancy_report_get(**form.cleaned_data) if form.is_valid() else None
    if request.GET.get("format") == "csv":
        if report is None:
            return HttpResponseBadRequest(form.errors.as_text(), content_type="text/plain")
        return _report_csv(report)
    csv_url = None
    if report is not None:
        csv_url = "?" + urlencode({"start": report.start, "end": report.end, "format": "csv"})
    context = {
        **admin.site.each_context(request),
        "title": "Occupancy and revenue",
        "form": form,
        "report": report,
        "csv_url": csv_url,
    }
    return TemplateResponse(request, "operations/occupancy_report.html", context)


def _report_csv(report: OccupancyReport) -> HttpResponse:
    filename = f"occupancy-{report.start}-to-{report.end}.csv"
    response = HttpResponse(
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
    writer = csv.writer(response)
    writer.writerow(
        [
            "week",
            "week_start",
            "room",
            "slots_offered",
            "slots_closed",
            "slots_booked",
            "occupancy_percent",
            "lapsed_holds",
            *(f"revenue_{currency}" for currency in report.currencies),
            *(f"refunded_{currency}" for currency in report.currencies),
        ]
    )
    for week in report.rows:
        writer.writerow(
            [
                week.iso_week,
                week.week_start.isoformat(),
                week.room,
                week.offered,
                week.closed,
                week.booked,
                "" if week.occupancy is None else week.occupancy,
                week.lapsed,
                *(week.revenue.get(currency, NOTHING) for currency in report.currencies),
                *(week.refunded.get(currency, NOTHING) for currency in report.currencies),
            ]
        )
    return response


# The day sheet reloads itself this often (seconds): a meta refresh, which
# works without JavaScript and survives a lost connection.
DAY_SHEET_REFRESH_SECONDS = 30
ATTENDANCE_RECORDED: dict[str, str] = {
    Reservation.Attendance.CHECKED_IN: "{name} checked in.",
    Reservation.Attendance.NO_SHOW: "{name} marked a no-show.",
}


def staff_permission_required(permission: str) -> Callable:
    """
    Let in active staff with ``permission``; others to the admin's login, or 403.

    Like the admin: anyone who is not active staff is sent to log in there;
    staff without the permission are refused (403).
    """

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            user = request.user
            if not (user.is_active and user.is_staff):
                return redirect_to_login(request.get_full_path(), reverse("admin:login"))
            if not user.has_perm(permission):
                raise PermissionDenied
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


def _venue_date(moment: Any) -> date:
    return timezone.localdate(moment, timezone.get_default_timezone())


@require_GET
@never_cache
@staff_permission_required("reservations.view_reservation")
def day_sheet(request: HttpRequest, day: str | None = None) -> HttpResponse:
    """
    The day sheet of ``day`` (``2026-12-04``, venue time; today without one).

    ``?date=2026-12-04`` (the date picker) redirects to that day's sheet; an
    impossible date is a 404.
    """
    picked = request.GET.get("date")
    if picked:
        try:
            return redirect("operations:day_sheet", day=date.fromisoformat(picked).isoformat())
        except ValueError:
            raise Http404 from None
    now = timezone.now()
    try:
        shown = date.fromisoformat(day) if day is not None else _venue_date(now)
    except ValueError:
        raise Http404 from None
    if not day_within_reach(shown, _venue_date(now)):
        raise Http404(DATE_OUT_OF_RANGE)
    sheet = day_sheet_get(day=shown, now=now)
    return render(
        request,
        "operations/day_sheet.html",
        {
            "sheet": sheet,
            "today": _venue_date(now),
            "previous_day": shown - timedelta(days=1),
            "next_day": shown + timedelta(days=1),
            "refresh_seconds": DAY_SHEET_REFRESH_SECONDS,
            "check_in_from": now + CHECK_IN_OPENS,
            "can_change": request.user.has_perm("reservations.change_reservation"),
        },
    )


@require_POST
@staff_permission_required("reservations.change_reservation")
def reservation_attendance(request: HttpRequest, pk: int) -> HttpResponse:
    """
    Check a paid booking's party in or mark it a no-show (``attendance``), back to its day.

    A refusal (``reservation_attendance_set``) is shown as a message on the sheet.
    """
    reservation = get_object_or_404(Reservation.objects.select_related("time_slot"), pk=pk)
    attendance = request.POST.get("attendance", "")
    if attendance not in Reservation.Attendance.values:
        return HttpResponseBadRequest("attendance: checked_in or no_show")
    day = _venue_date(reservation.time_slot.starts_at)
    try:
        actor = request.user if isinstance(request.user, AbstractBaseUser) else None
        reservation_attendance_set(reservation=reservation, attendance=attendance, actor=actor)
    except errors.ReservationError as refused:
        messages.error(request, f"{reservation.customer_name}: {refused.message}")
    else:
        name = reservation.customer_name
        messages.success(request, ATTENDANCE_RECORDED[attendance].format(name=name))
    return redirect("operations:day_sheet", day=day.isoformat())


METRICS_NOT_ALLOWED = "This address may not read the metrics.\n"
METRICS_UNAUTHORIZED = "The metrics need the scraper's bearer token.\n"


@require_GET
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    """
    The venue's numbers in Prometheus' text format, for the operator's scraper only.

    Off (404) unless ``METRICS_TOKEN`` or ``METRICS_ALLOWED_NETWORKS`` is set.
    A client outside the allowed networks gets 403; a request without the
    token (``Authorization: Bearer <METRICS_TOKEN>``), or with another, 401.
    With both set, both are required. No number is read before the checks
    pass.
    """
    token: str = settings.METRICS_TOKEN
    networks = [
        ipaddress.ip_network(network.strip(), strict=False)
        for network in settings.METRICS_ALLOWED_NETWORKS
    ]
    if not token and not networks:
        raise Http404
    if networks:
        address = client_ip(request)
        if address is None or not any(address in network for network in networks):
            return HttpResponse(METRICS_NOT_ALLOWED, status=403, content_type="text/plain")
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            response = HttpResponse(METRICS_UNAUTHORIZED, status=401, content_type="text/plain")
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    return HttpResponse(metrics_exposition(), content_type=CONTENT_TYPE_PLAIN_0_0_4)
