"""Every page carries a Content-Security-Policy; times are ISO and 24-hour in the browser's zone."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from dashboard.web.middleware import POLICY

PAGES = (
    "/",
    "/machines/gpu-01/",
    "/jobs/",
    "/jobs/new/",
    "/economics/",
    "/economics/plan/",
    "/reports/",
    "/alerts/",
    "/account/tokens/",
    "/api/v1/docs",
    "/admin/",
    "/login/",
)


@pytest.mark.parametrize("path", PAGES)
def test_every_page_has_a_content_security_policy_allowing_this_server_only(client, admin_user, machine, path):
    client.force_login(admin_user)
    response = client.get(path)
    assert response.status_code == 200, path
    assert response["Content-Security-Policy"] == POLICY
    assert "default-src 'self'" in POLICY and "unsafe-inline" not in POLICY
    assert "<script>" not in response.content.decode()  # every script is a static file


def test_the_api_docs_load_swagger_ui_from_this_servers_static_files(client, viewer):
    client.force_login(viewer)
    page = client.get("/api/v1/docs").content.decode()
    assert "/static/vendor/swagger-ui-bundle-5.31.0.min.js" in page
    assert "/static/vendor/swagger-ui-5.31.0.min.css" in page
    # Every script and stylesheet from this server (the page's CSRF token once held "cdn" by chance).
    sources = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', page)
    assert sources and all(src.startswith("/") and not src.startswith("//") for src in sources), sources
    assert '"url": "/api/v1/openapi.json"' in page


def test_the_admin_shows_iso_24_hour_times_in_the_zone_the_browser_named(client, admin_user):
    client.force_login(admin_user)
    client.cookies["tz"] = "Australia/Adelaide"
    admin_user.last_login = datetime(2026, 11, 30, 0, 18, tzinfo=UTC)
    admin_user.save()
    page = client.get(f"/admin/auth/user/{admin_user.pk}/change/").content.decode()
    assert 'value="2026-11-30"' in page  # the date half of last_login, 10:48 in Adelaide
    assert 'value="10:48:00"' in page
    assert "a.m." not in page


def test_a_zone_cookie_the_browser_did_not_write_falls_back_to_the_servers_zone(client, viewer):
    client.force_login(viewer)
    client.cookies["tz"] = "Mars/Olympus"
    assert client.get("/").status_code == 200
