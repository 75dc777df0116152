from django.apps import AppConfig


class TeamsConfig(AppConfig):
    name = "dashboard.teams"
    verbose_name = "Teams"

    def ready(self) -> None:
        from dashboard.accounts.signals import token_issued

        from . import checks  # noqa: F401  (registers the single sign-on checks)
        from .tokens import scope_new_token

        token_issued.connect(scope_new_token, dispatch_uid="teams.scope_new_token")
