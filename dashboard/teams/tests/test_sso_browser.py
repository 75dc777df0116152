"""Single sign-on end to end: Chromium logs in at a real OIDC provider (django-oauth-toolkit in its
own process, started here) and lands on the dashboard in the team its groups name."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.auth import get_user_model
from django.db import connections

from dashboard.teams import sso
from dashboard.teams.models import Membership, Team
from dashboard.teams.signals import changed

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[3]
CLIENT_ID, CLIENT_SECRET = "hwdash-test-client", "hwdash-test-secret-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the provider exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"the provider did not answer {url} within {timeout_s} s")


@pytest.fixture
def provider(tmp_path, live_server):
    """The provider's base URL; its user ``rita`` (password ``rita-pass``) is in groups researchers and staff."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "provider-key.pem"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS"))}
    env.update(
        DJANGO_SETTINGS_MODULE="dashboard.teams.tests.oidc_provider.settings",
        OIDC_PROVIDER_DB=str(tmp_path / "provider.sqlite3"),
        OIDC_PROVIDER_KEY_FILE=str(key_file),
        PYTHONUNBUFFERED="1",
    )
    run = {"cwd": ROOT, "env": env, "check": True, "capture_output": True, "timeout": 120}
    subprocess.run([sys.executable, "-m", "django", "migrate", "-v", "0"], **run)
    redirect_uri = f"{live_server.url}/oidc/callback/"
    seed = "dashboard.teams.tests.oidc_provider.seed"
    args = ["rita", "rita-pass", "rita@example.org", "researchers,staff", CLIENT_ID, CLIENT_SECRET, redirect_uri]
    subprocess.run([sys.executable, "-m", seed, *args], **run)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "django", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{base}/o/.well-known/openid-configuration", proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def sso_settings(settings, provider):
    settings.OIDC_RP_CLIENT_ID = CLIENT_ID
    settings.OIDC_RP_CLIENT_SECRET = CLIENT_SECRET
    settings.OIDC_OP_DISCOVERY_URL = f"{provider}/o/.well-known/openid-configuration"
    settings.OIDC_TEAM_ROLES = "ml-infra=infra:admin,researchers=research:operator"
    settings.AUTHENTICATION_BACKENDS = [*settings.AUTHENTICATION_BACKENDS, "dashboard.teams.sso.Backend"]
    return settings


def off_loop(fn):
    """Run ``fn`` in a thread of its own: Playwright runs an event loop in this one, where Django
    refuses the ORM."""

    def call():
        try:
            return fn()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result()


@pytest.fixture
def accounts(transactional_db, django_user_model):
    Team.objects.create(slug="research", name="Research")
    django_user_model.objects.create_user("victor", password="victor-pass")  # a local account beside SSO


@pytest.fixture
def audit_log():
    events: list[tuple[str, dict]] = []

    def record(sender, actor, action, detail, **kwargs):
        events.append((action, detail))

    changed.connect(record, dispatch_uid="test_sso_browser.audit")
    yield events
    changed.disconnect(dispatch_uid="test_sso_browser.audit")


def test_a_user_signs_in_with_sso_and_lands_in_the_team_its_groups_name(
    sso_settings, accounts, audit_log, live_server, page
):
    page.goto(f"{live_server.url}/login/")
    assert page.locator("#id_password").is_visible()  # local accounts keep their form
    page.click("#sso-login")

    page.wait_for_url(f"{sso_settings.OIDC_OP_DISCOVERY_URL.split('/o/')[0]}/accounts/login/**")
    page.fill("#id_username", "rita")
    page.fill("#id_password", "rita-pass")
    page.click("#provider-login")
    page.wait_for_selector("#authorizationForm")  # the provider asks for consent
    page.click("input[name=allow]")

    page.wait_for_url(f"{live_server.url}/")
    assert page.inner_text("nav a.user") == "rita"
    user = off_loop(lambda: get_user_model().objects.get(username="rita"))
    assert user.email == "rita@example.org" and not user.has_usable_password()
    memberships = off_loop(
        lambda: {(m.team.slug, m.role, m.source) for m in Membership.objects.filter(user=user).select_related("team")}
    )
    assert memberships == {("research", "operator", sso.SOURCE)}  # "staff" maps to no team
    assert ("team.member_add", {"team": "research", "user": "rita", "role": "operator", "source": "oidc"}) in audit_log

    # A local account still logs in with its password beside single sign-on.
    page.context.clear_cookies()
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", "victor")
    page.fill("#id_password", "victor-pass")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    assert page.inner_text("nav a.user") == "victor"
    assert not page.errors
