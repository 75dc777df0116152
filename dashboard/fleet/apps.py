from django.apps import AppConfig


class FleetConfig(AppConfig):
    name = "dashboard.fleet"
    verbose_name = "Fleet"

    def ready(self) -> None:
        from dashboard import checks  # noqa: F401  (registers the system checks)
