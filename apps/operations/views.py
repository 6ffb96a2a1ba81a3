import hmac
import ipaddress

from django.conf import settings
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from apps.messaging.selectors import outbox_backlog
from config.client_address import client_ip
from escape_rooms_backend import timeline

from .reports import metrics_exposition
from .selectors import (
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
