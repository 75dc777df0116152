"""Guessing passwords is locked out per user and address, with an admin unlock; a personal token
that calls too often gets 429 with Retry-After."""

from __future__ import annotations

import time

import pytest
from axes.models import AccessAttempt
from django.core.cache import cache

from dashboard.accounts.models import ApiToken
from dashboard.accounts.ratelimit import WINDOW_S, window_key


def log_in(client, username: str, password: str, address: str = "10.0.0.1"):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=address)


@pytest.mark.django_db
def test_five_wrong_passwords_lock_that_user_out_from_that_address(client, viewer, operator, settings):
    assert settings.AXES_FAILURE_LIMIT == 5
    for _ in range(4):
        assert log_in(client, "victor", "guess").status_code == 200  # the form again, with its error
    assert log_in(client, "victor", "guess").status_code == 429  # the fifth locks
    locked = log_in(client, "victor", "victor-pass")  # even the right password, now
    assert locked.status_code == 429
    page = locked.content.decode()
    assert "Login locked" in page and "victor" in page and "axes_reset_username victor" in page
    assert "_auth_user_id" not in client.session
    # Another user from the same address, and the same user from elsewhere, still log in.
    assert log_in(client, "olga", "olga-pass").status_code == 302
    client.logout()
    assert log_in(client, "victor", "victor-pass", address="10.0.0.2").status_code == 302


@pytest.mark.django_db
def test_an_admin_unlocks_a_user_by_deleting_the_attempt_in_the_admin(client, viewer, admin_user):
    for _ in range(5):
        log_in(client, "victor", "guess")
    assert log_in(client, "victor", "victor-pass").status_code == 429
    admin = client.__class__()
    admin.force_login(admin_user)
    attempt = AccessAttempt.objects.get(username="victor")
    assert "victor" in admin.get("/admin/axes/accessattempt/").content.decode()
    r = admin.post(
        "/admin/axes/accessattempt/",
        {"action": "delete_selected", "_selected_action": [attempt.pk], "post": "yes"},
    )
    assert r.status_code == 302 and not AccessAttempt.objects.exists()
    assert log_in(client, "victor", "victor-pass").status_code == 302


@pytest.mark.django_db
def test_a_right_password_clears_earlier_failures(client, viewer):
    for _ in range(4):
        log_in(client, "victor", "guess")
    assert log_in(client, "victor", "victor-pass").status_code == 302
    client.logout()
    for _ in range(4):
        log_in(client, "victor", "guess")
    assert log_in(client, "victor", "victor-pass").status_code == 302  # 4 + 4 failures never reached 5


@pytest.fixture
def token_limit(settings, viewer):
    """A limit of 3 calls a minute, and a fresh window for the viewer (no other test's count)."""
    settings.API_TOKEN_RATE_PER_MIN = 3
    if WINDOW_S - time.time() % WINDOW_S < 5:  # so the test's calls all fall in one window
        time.sleep(WINDOW_S - time.time() % WINDOW_S)
    cache.delete(window_key(viewer.pk, time.time()))
    return ApiToken.issue(viewer, "script")


@pytest.mark.django_db
def test_a_personal_token_past_its_rate_gets_429_with_retry_after(client, viewer, token_limit):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_limit}"}
    for _ in range(3):
        assert client.get("/api/v1/machines", **auth).status_code == 200
    r = client.get("/api/v1/machines", **auth)
    assert r.status_code == 429 and r.json()["error"].startswith("too many requests"), r.content
    assert 1 <= int(r["Retry-After"]) <= WINDOW_S
    # The same count covers the token's other uses: CSV reports and /metrics.
    assert client.get("/metrics", **auth).status_code == 429
    # A browser session is not counted.
    client.force_login(viewer)
    assert client.get("/api/v1/machines").status_code == 200


@pytest.mark.django_db
def test_the_openapi_document_says_a_token_may_get_429(client):
    doc = client.get("/api/v1/openapi.json").json()
    assert "429" in doc["paths"]["/api/v1/machines"]["get"]["responses"]
