from django.urls import path

from . import views

app_name = "reports"

urlpatterns = [
    path("", views.fleet, name="fleet"),
    path("fleet.csv", views.fleet_csv, name="fleet_csv"),
    path("machines/<str:name>.csv", views.machine_csv, name="machine_csv"),
    path("machines/<str:name>/", views.machine, name="machine"),
]
