"""HTTPS=1 turns on secure cookies, the redirect to HTTPS and HSTS; production settings pass
`manage.py check --deploy`; without it (``dev.py run``) plain HTTP is served as before.

Settings are read once per process, so each case runs in a fresh Python with its environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": "k" * 20 + "-production-secret-key-for-the-deploy-check-0123456789",
    "ALLOWED_HOSTS": "dashboard.example.com,testserver",
    "HTTPS": "1",
}

# GET a page and /healthz over plain HTTP and through a proxy that says HTTPS.
PROBE = """
import json, django
django.setup()
from django.conf import settings
from django.test import Client
c = Client()
plain = c.get("/login/")
proxied = c.get("/login/", HTTP_X_FORWARDED_PROTO="https")
health = c.get("/healthz")
print(json.dumps({
    "plain": [plain.status_code, plain.get("Location")],
    "proxied": [proxied.status_code, proxied.get("Strict-Transport-Security")],
    "health": health.status_code != 301,
    "cookies_secure": [settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE],
}))
"""


def run(args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECURE_COOKIES")}
    full = clean | {"DASHBOARD_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "dashboard.settings"} | env
    return subprocess.run(args, cwd=ROOT, env=full, capture_output=True, text=True, timeout=120)


def test_production_settings_pass_the_deploy_check(tmp_path):
    r = run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], PRODUCTION, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "System check identified no issues" in r.stdout


def test_with_https_plain_http_is_redirected_and_https_answers_with_hsts(tmp_path):
    r = run([sys.executable, "-c", PROBE], PRODUCTION, tmp_path)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["plain"] == [301, "https://testserver/login/"]
    assert seen["proxied"][0] == 200 and seen["proxied"][1] == "max-age=31536000"
    assert seen["health"], "probes call /healthz over plain HTTP: never redirected"
    assert seen["cookies_secure"] == [True, True]


def test_without_https_a_local_run_stays_on_plain_http(tmp_path):
    r = run([sys.executable, "-c", PROBE], {"DEBUG": "1", "ALLOWED_HOSTS": "testserver"}, tmp_path)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["plain"] == [200, None] and seen["proxied"][1] is None
    assert seen["cookies_secure"] == [False, False]
