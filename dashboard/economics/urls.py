from django.urls import path

from . import plan_views, views

app_name = "economics"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("machines/<str:name>/", views.machine, name="machine"),
    path("plan/", plan_views.plan_page, name="plan"),
    path("plan/backfill/", plan_views.backfill_switch, name="plan_backfill"),
]
