"""System checks for single sign-on: a wrong OIDC_* setting is named at start, not at the first login."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, register

from . import sso


@register()
def oidc_settings(app_configs, **kwargs) -> list[Error]:
    errors = []
    try:
        sso.parse_team_roles(settings.OIDC_TEAM_ROLES)
    except ValueError as exc:
        errors.append(
            Error(
                str(exc),
                hint='Write it as OIDC_TEAM_ROLES="ml-infra=infra:admin,researchers=research:operator".',
                id="teams.E001",
            )
        )
    if not sso.enabled():
        return errors
    if not settings.OIDC_RP_CLIENT_SECRET:
        errors.append(
            Error(
                "OIDC_RP_CLIENT_ID is set but OIDC_RP_CLIENT_SECRET is not.",
                hint="Set OIDC_RP_CLIENT_SECRET (or OIDC_RP_CLIENT_SECRET_FILE) to the secret the provider gave.",
                id="teams.E002",
            )
        )
    if not settings.OIDC_OP_DISCOVERY_URL:
        missing = [
            name
            for name in ("OIDC_OP_AUTHORIZATION_ENDPOINT", "OIDC_OP_TOKEN_ENDPOINT", "OIDC_OP_JWKS_ENDPOINT")
            if not getattr(settings, name)
        ]
        if missing:
            errors.append(
                Error(
                    f"Single sign-on is on but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set.",
                    hint="Set OIDC_OP_DISCOVERY_URL to the provider's /.well-known/openid-configuration, "
                    "or each endpoint.",
                    id="teams.E003",
                )
            )
    return errors
