from django.contrib import admin
from django.urls import include, path

from apps.operations.views import healthz
from config.api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", api.urls),
    path("healthz", healthz, name="healthz"),
    path("", include("apps.booking.urls")),
]
