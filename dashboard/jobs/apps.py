from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "dashboard.jobs"
    verbose_name = "Jobs"

    def ready(self) -> None:
        # Changes to teams, roles and quotas go into this app's audit log, the only one.
        from dashboard.teams.signals import changed

        changed.connect(_audit_team_change, dispatch_uid="jobs.audit_team_change")


def _audit_team_change(sender, actor, action: str, detail: dict, **kwargs) -> None:
    from .service import audit

    audit(actor, action, None, **detail)
