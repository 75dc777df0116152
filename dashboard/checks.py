"""System checks: wrong configuration is reported with an id and a hint, not a crash later."""

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=False)
def secret_key_from_environment(app_configs, **kwargs):
    if settings.DEBUG or settings.SECRET_KEY_FROM_ENV:
        return []
    return [
        Error(
            "SECRET_KEY is not set and DEBUG is off.",
            hint="Set SECRET_KEY (or SECRET_KEY_FILE) in the environment; "
            "only a DEBUG=1 local run may use the key generated in the data folder.",
            id="dashboard.E001",
        )
    ]
