"""How users authenticate: a browser session or a personal API token, the same for the JSON API,
CSV downloads and ``/metrics``."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja.security import HttpBearer, django_auth

from dashboard.core.auth import bearer_token

from .models import ApiToken
from .ratelimit import RateLimited, count_call


class UserToken(HttpBearer):
    def authenticate(self, request, token: str):
        user = ApiToken.authenticate(token)
        if user is not None:
            count_call(user.pk)  # RateLimited becomes a 429 (dashboard/web/api.py)
            request.user = user
        return user


USER_AUTH = [UserToken(), django_auth]


def rate_limited_response(exc: RateLimited) -> HttpResponse:
    """429 with ``Retry-After``: the API's answer and the token-read views' alike."""
    response = JsonResponse({"error": str(exc)}, status=429)
    response["Retry-After"] = str(exc.retry_after_s)
    return response


def signed_in_user(request: HttpRequest) -> Any | None:
    """The user of the session, else of a valid ``Authorization: Bearer hwu_…`` token, else None.

    A token's user becomes ``request.user`` for the rest of the request.
    """
    if request.user.is_authenticated:
        return request.user
    token = bearer_token(request)
    user = ApiToken.authenticate(token) if token else None
    if user is not None:
        count_call(user.pk)
        request.user = user
    return user


def token_or_session(*, login_page: bool) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """For views any signed-in user may read, scripts with a personal token included. Without a
    session or token, pages (``login_page``) send the browser to log in; a bad token, or no
    credentials on a machine-read view, gets a 401 JSON answer that says what to send."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                user = signed_in_user(request)
            except RateLimited as exc:
                return rate_limited_response(exc)
            if user is not None:
                return view(request, *args, **kwargs)
            token = bearer_token(request)
            if token is None and login_page:
                return redirect_to_login(request.get_full_path())
            message = (
                "Authorization: the token is unknown or revoked"
                if token
                else "send a personal API token (Authorization: Bearer hwu_...) or log in"
            )
            response = JsonResponse({"error": message}, status=401)
            response["WWW-Authenticate"] = 'Bearer realm="hwdash"'
            return response

        return wrapper

    return decorate
