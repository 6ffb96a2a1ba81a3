from django.contrib import admin
from django.urls import include, path

from apps.operations.views import healthz, metrics
from apps.payments.webhook import payment_webhook, stripe_webhook
from config.api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/payments/webhook/", payment_webhook, name="payment_webhook"),
    path("api/payments/stripe/webhook/", stripe_webhook, name="stripe_webhook"),
    path("api/", api.urls),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics, name="metrics"),
    path("", include("apps.booking.urls")),
]
