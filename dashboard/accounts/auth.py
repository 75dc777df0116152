"""How users authenticate to the JSON API: a session (the browser) or a personal API token."""

from __future__ import annotations

from ninja.security import HttpBearer, django_auth

from .models import ApiToken


class UserToken(HttpBearer):
    def authenticate(self, request, token: str):
        user = ApiToken.authenticate(token)
        if user is not None:
            request.user = user
        return user


USER_AUTH = [UserToken(), django_auth]
