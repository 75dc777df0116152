from django.apps import AppConfig


class TeamsConfig(AppConfig):
    name = "dashboard.teams"
    verbose_name = "Teams"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the single sign-on checks)
