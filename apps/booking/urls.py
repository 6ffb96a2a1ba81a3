from django.urls import path

from . import views

app_name = "booking"

urlpatterns = [
    path("", views.rooms, name="rooms"),
    path("rooms/<slug:slug>/", views.room, name="room"),
    path("rooms/<slug:slug>/<str:key>/reserve/", views.reserve, name="reserve"),
    path("rooms/<slug:slug>/<str:key>/wait/", views.wait, name="wait"),
    path("find/", views.find, name="find"),
    path("waitlist/<str:token>/", views.waiting, name="waiting"),
    path("waitlist/<str:token>/leave/", views.waiting_leave, name="waiting_leave"),
    path("reservations/<str:token>/", views.reservation, name="reservation"),
    path("reservations/<str:token>/pay/", views.pay, name="pay"),
    path("reservations/<str:token>/cancel/", views.cancel, name="cancel"),
    path("reservations/<str:token>/keep/", views.keep, name="keep"),
    path("reservations/<str:token>/move/", views.move, name="move"),
]
