from django.apps import AppConfig


class EconomicsConfig(AppConfig):
    name = "dashboard.economics"
    verbose_name = "Economics (RoI and capacity)"
