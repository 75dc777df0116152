from django.urls import path

from . import views

app_name = "alerts"

urlpatterns = [
    path("", views.alert_list, name="list"),
    path("rules/new/", views.rule_edit, name="rule_new"),
    path("rules/<int:pk>/", views.rule_edit, name="rule_edit"),
    path("ghosts/<str:machine>/<int:pgid>/cleanup/", views.confirm_cleanup, name="confirm_cleanup"),
]
