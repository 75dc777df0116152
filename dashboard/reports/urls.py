from django.urls import path

from . import team_views, views

app_name = "reports"

urlpatterns = [
    path("", views.fleet, name="fleet"),
    path("fleet.csv", views.fleet_csv, name="fleet_csv"),
    path("teams/", team_views.teams_page, name="teams"),
    path("teams.csv", team_views.teams_csv, name="teams_csv"),
    path("machines/<str:name>.csv", views.machine_csv, name="machine_csv"),
    path("machines/<str:name>/", views.machine, name="machine"),
]
