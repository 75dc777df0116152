"""Fixtures shared by every test: users in each role, an enrolled machine, batches."""

from __future__ import annotations

import time

import pytest


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _empty_cache():
    """Each test starts with an empty cache: figures cached by id (a job's list summary) would
    otherwise carry over to the next test's job of the same id."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser("admin", "", "admin-pass")


@pytest.fixture
def operator(django_user_model):
    from django.contrib.auth.models import Group

    user = django_user_model.objects.create_user("olga", password="olga-pass")
    user.groups.add(Group.objects.get_or_create(name="operator")[0])
    return user


@pytest.fixture
def viewer(django_user_model):
    from django.contrib.auth.models import Group

    user = django_user_model.objects.create_user("victor", password="victor-pass")
    user.groups.add(Group.objects.get_or_create(name="viewer")[0])
    return user


@pytest.fixture
def machine(db):
    from dashboard.fleet.models import Machine

    return Machine.objects.create(name="gpu-01")


@pytest.fixture
def agent_token(machine) -> str:
    return machine.issue_token()


def migrate(targets: list[tuple[str, str]]):
    """Migrate the test database to ``targets``; the app registry of that state (migration tests)."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def make_sample(seq: int, ts: float | None = None, gpus: int = 2, cpu: float = 25.0, util: float = 50.0) -> dict:
    """A realistic 10 s window as the agent sends it (H100-like GPUs)."""
    ts = ts if ts is not None else time.time()

    def stats(v: float, spread: float = 1.0, hi: float | None = None) -> dict:
        top = v + spread if hi is None else min(hi, v + spread)
        return {"min": max(0.0, v - spread), "mean": v, "max": top}

    return {
        "seq": seq,
        "ts": ts,
        "interval_s": 10.0,
        "count": 10,
        "system": {
            "cpu_percent": stats(cpu, 5, 100),
            "load1": stats(1.5, 0.2),
            "mem_used_bytes": stats(64e9, 1e8),
            "mem_total_bytes": 256 * 2**30,
            "swap_used_bytes": stats(0, 0),
            "swap_total_bytes": 0,
            "disk_read_bytes_per_s": stats(1e6, 1e5),
            "disk_write_bytes_per_s": stats(2e6, 1e5),
            "net_rx_bytes_per_s": stats(5e5, 1e4),
            "net_tx_bytes_per_s": stats(4e5, 1e4),
            "mem_wired_bytes": None,
            "mem_compressed_bytes": None,
            "cpu_per_core_percent": [cpu] * 8,
        },
        "gpus": [
            {
                "index": i,
                "uuid": f"GPU-{i:08d}-test",
                "util_percent": stats(util, 10, 100),
                "mem_util_percent": stats(util / 2, 5, 100),
                "mem_used_bytes": stats(40e9, 1e8),
                "mem_total_bytes": 85520809984,
                "power_watts": stats(350, 20),
                "power_limit_watts": 700.0,
                "temp_c": stats(55, 2),
                "sm_clock_mhz": stats(1980, 0),
                "mem_clock_mhz": stats(2619, 0),
                "throttle_reasons": 0,
                "ecc_errors": 0,
                "xid_errors": 0,
                "processes": [{"pid": 4242, "name": "python3", "user": "alice", "mem_used_bytes": 40_000_000_000}],
            }
            for i in range(gpus)
        ],
    }


def make_inventory(gpus: int = 2) -> dict:
    return {
        "hostname": "gpu-01.example",
        "os": "Linux 6.1.0 (Debian GNU/Linux 12)",
        "cpu_model": "AMD EPYC 7763 64-Core Processor",
        "cpu_cores": 64,
        "cpu_threads": 128,
        "mem_total_bytes": 256 * 2**30,
        "accelerators": [
            {
                "index": i,
                "vendor": "nvidia",
                "name": "NVIDIA H100 80GB HBM3",
                "uuid": f"GPU-{i:08d}-test",
                "mem_total_bytes": 85520809984,
                "power_limit_watts": 700.0,
                "driver": "590.48.01",
            }
            for i in range(gpus)
        ],
    }


def make_batch(seqs, ts: float | None = None, inventory: bool = True, gpus: int = 2, **kw) -> dict:
    now = ts if ts is not None else time.time()
    seqs = list(seqs)
    samples = [make_sample(s, now - 10 * (len(seqs) - 1 - i), gpus=gpus, **kw) for i, s in enumerate(seqs)]
    return {
        "agent_version": "0.1.0",
        "dropped": 0,
        "inventory": make_inventory(gpus) if inventory else None,
        "samples": samples,
    }


@pytest.fixture
def process_env(transactional_db, settings) -> dict[str, str]:
    """Environment for a server, worker or agent process that must see this test's database."""
    import os

    db = settings.DATABASES["default"]
    if "sqlite" in db["ENGINE"]:
        url = f"sqlite:///{db['NAME']}"
    else:
        user, host, port = db.get("USER") or "postgres", db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
        url = f"postgres://{user}@{host}:{port}/{db['NAME']}"
    env = dict(os.environ, DATABASE_URL=url, PYTHONUNBUFFERED="1", DEBUG="1")
    return env


# ---- browser tests: Debian's chromium driven by Playwright (never `playwright install`) ----------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BROWSER_ZONE = "Australia/Adelaide"  # a half-hour offset catches times left in UTC


def _screenshots():
    import os
    import tempfile
    from pathlib import Path

    # The README's screenshots are refreshed only on request, so a test run leaves the tree clean.
    if os.environ.get("UPDATE_SCREENSHOTS"):
        return Path(__file__).resolve().parent / "docs" / "screenshots"
    return Path(tempfile.mkdtemp(prefix="hwdash-shots-"))


SCREENSHOTS = _screenshots()


@pytest.fixture
def page(live_server):
    """A fresh light-mode page in BROWSER_ZONE; `page.errors` collects JavaScript errors."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": 1400, "height": 900},
            timezone_id=BROWSER_ZONE,
            color_scheme="light",
            accept_downloads=True,
            # wait_for_function evaluates its predicate with eval, which the pages' CSP forbids;
            # dashboard/web/tests/test_every_page.py checks the policy in a context without this.
            bypass_csp=True,
        )
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        page.on("console", lambda msg: msg.type == "error" and page.errors.append(msg.text))
        yield page
        browser.close()


def log_in(page, base: str, username: str = "victor", password: str = "victor-pass", then: str = "/") -> None:
    """Log in through the form and wait for the page it leads to."""
    page.goto(base + "/login/?next=" + then)
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(base + then)
