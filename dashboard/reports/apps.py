from django.apps import AppConfig


class ReportsConfig(AppConfig):
    name = "dashboard.reports"
    verbose_name = "Reports"
