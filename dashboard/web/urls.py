from django.urls import path

from . import views

app_name = "fleet"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("machines/<str:name>/", views.machine, name="machine"),
    path("machines/<str:name>/series.csv", views.machine_series_csv, name="machine_series_csv"),
    # The machine page's heavy panels, each fetched by static/js/panels.js once the page is shown.
    path("machines/<str:name>/panels/throughput/", views.machine_throughput_panel, name="machine_throughput_panel"),
    path("machines/<str:name>/panels/jobs/", views.machine_jobs_panel, name="machine_jobs_panel"),
    path("machines/<str:name>/panels/economics/", views.machine_economics_panel, name="machine_economics_panel"),
]
