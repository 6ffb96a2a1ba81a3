from django.urls import path

from . import views

app_name = "booking"

urlpatterns = [
    path("", views.rooms, name="rooms"),
    path("rooms/<slug:slug>/", views.room, name="room"),
    path("rooms/<slug:slug>/<str:key>/reserve/", views.reserve, name="reserve"),
    path("find/", views.find, name="find"),
    path("reservations/<str:token>/", views.reservation, name="reservation"),
    path("reservations/<str:token>/pay/", views.pay, name="pay"),
    path("reservations/<str:token>/cancel/", views.cancel, name="cancel"),
    path("reservations/<str:token>/keep/", views.keep, name="keep"),
]
