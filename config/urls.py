from django.contrib import admin
from django.urls import include, path

from apps.operations.views import healthz, metrics, occupancy_report
from apps.payments.webhook import payment_webhook, stripe_webhook
from config.api import api

urlpatterns = [
    # A page of the admin, behind its login: before the admin's own URLs.
    path(
        "admin/reports/occupancy/",
        admin.site.admin_view(occupancy_report),
        name="occupancy_report",
    ),
    path("admin/", admin.site.urls),
    path("api/payments/webhook/", payment_webhook, name="payment_webhook"),
    path("api/payments/stripe/webhook/", stripe_webhook, name="stripe_webhook"),
    path("api/", api.urls),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics, name="metrics"),
    path("staff/", include("apps.operations.urls")),
    path("", include("apps.booking.urls")),
]
