"""Every page in a real browser at 1400 px and 390 px, light and dark, under the real CSP.

Each page must load with no script error, no CSP violation, no failed request and none to another
origin; at 390 px the document is no wider than the screen; every chart on screen has data or a
note saying why not. One browser serves the module; each viewport and theme is a fresh context.
The README's screenshots are written here when UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.test import override_settings

from conftest import BROWSER_ZONE, CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, make_sample
from dashboard.alerts.models import AlertRule
from dashboard.fleet import rollup
from dashboard.fleet.models import Machine
from dashboard.jobs.models import Job, JobAttempt
from dashboard.web.tests.test_browser import add_tokens, an_hour_of_samples, send

# pytest-django sets the test database up only for a run that selects a test asking for it: here
# the lost-job test (``db``), which a run of the module includes.
pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

UTC = ZoneInfo("UTC")
FAST_HASHER = "django.contrib.auth.hashers.MD5PasswordHasher"
VIEWPORTS = {"desktop": {"width": 1400, "height": 900}, "phone": {"width": 390, "height": 844}}

# Collects what the page reports: CSP violations (not subject to the CSP: an init script).
WATCH = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push(
    e.violatedDirective + " " + (e.blockedURI || "inline") + " " + (e.sourceFile || "") + ":" + e.lineNumber);
});
"""

# Every chart the reader can see: drawn with points, or carrying a note (a Plotly annotation or a
# paragraph in place of the chart). Charts inside a closed <details> or a hidden block are skipped.
CHARTS = """
() => Array.from(document.querySelectorAll(".chart, .report-chart, .sparkline"))
  .filter((el) => el.offsetParent !== null && el.getClientRects().length)
  .map((el) => {
    const points = (el.data || []).some((t) => (t.x && t.x.length) || (t.y && t.y.length));
    const notes = ((el.layout && el.layout.annotations) || []).map((a) => a.text).filter(Boolean);
    const text = el.classList.contains("js-plotly-plot") ? "" : el.textContent.trim();
    return { id: el.id || el.className, ok: points || notes.length > 0 || text.length > 0 };
  })
"""


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module. Playwright's event loop runs in this thread from here on, which
    Django would take for async code: the tests' own database calls are synchronous, so allow them."""
    from playwright.sync_api import sync_playwright

    before = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
    if before is None:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = before


@pytest.fixture(scope="module")
def site(django_db_setup, django_db_blocker):
    """A GPU machine with an hour of data and jobs, a CPU machine with 30 minutes, one offline, one
    never seen; an admin in the operator group, an alert rule. Built once for the module (it takes
    seconds) and committed, so the server sees it; the database is emptied afterwards.

    The server is started here rather than through pytest-django's ``live_server`` fixture, which
    empties the database after every test that uses it."""
    from django.db import connection
    from pytest_django.live_server_helper import LiveServer

    # The site is built in, and flushed from, the database the connection names: never one that
    # is not the test database (a run selecting only browser tests of this module, see above).
    settings_dict = connection.settings_dict
    name = str(settings_dict["NAME"])
    if not (name.startswith("test_") or name == str((settings_dict.get("TEST") or {}).get("NAME"))):
        pytest.fail(
            f"the test database is not set up, and {name} is not one to build this site in and flush: "
            "select the module's lost-job test too (-k '... or lost_jobs'), or run the whole module"
        )
    # Machines stay online for the module's minutes (the samples were sent once, at its start).
    with django_db_blocker.unblock(), override_settings(OFFLINE_AFTER_S=3600):
        # The hasher every test's autouse fixture (conftest._fast_passwords) leaves in force.
        with override_settings(PASSWORD_HASHERS=[FAST_HASHER]):
            server = LiveServer("localhost")
            data = build_site(server.url)
        yield data
        server.stop()
        call_command("flush", interactive=False, verbosity=0)


def build_site(url: str) -> dict:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    admin = get_user_model().objects.create_superuser("admin", "", "admin-pass")
    admin.groups.add(Group.objects.get_or_create(name="operator")[0])
    gpu_box = Machine.objects.create(name="gpu-01")
    started = datetime.fromtimestamp(time.time() - 3000, UTC)
    jobs = []
    for name, kind, gpus in (("llama-finetune", "train", [0, 1]), ("chat-serve", "serve", [2])):
        job = Job.objects.create(
            owner=admin, name=name, kind=kind, argv=["x"], gpus=len(gpus), machine=gpu_box,
            assigned_gpus=gpus, status="running", started_at=started, attempt=1,
        )  # fmt: skip
        JobAttempt.objects.create(job=job, number=1, machine=gpu_box, gpus=gpus, started_at=started)
        jobs.append(job)
    samples = an_hour_of_samples(gpus=4)
    add_tokens(samples, jobs[0].pk, jobs[1].pk)
    for i in (200, 201):  # a clock-throttled stretch and an XID event to mark
        samples[i]["gpus"][0]["throttle_reasons"] = 0x4
    for sample in samples[250:]:
        sample["gpus"][1]["xid_errors"] = 1
    send(gpu_box, samples, gpus=4)
    cpu_box = Machine.objects.create(name="cpu-04")
    now = time.time()
    cpu = [make_sample(i + 1, now - 10 * (179 - i), gpus=0, cpu=30 + 20 * math.sin(i / 9)) for i in range(180)]
    send(cpu_box, cpu, gpus=0)
    stale = time.time() - 900
    send(Machine.objects.create(name="cpu-02"), [make_sample(1, stale, gpus=0)], gpus=0,
         now=datetime.fromtimestamp(stale, UTC))  # fmt: skip
    Machine.objects.create(name="gpu-03")
    finished = Job.objects.create(
        owner=admin, name="old-run", kind="train", argv=["x"], gpus=0, machine=cpu_box, status="succeeded",
        started_at=datetime.fromtimestamp(now - 1200, UTC), finished_at=datetime.fromtimestamp(now - 600, UTC),
    )  # fmt: skip
    AlertRule.objects.create(name="Hot GPU", kind="gpu_temperature", threshold=85)
    rollup.catch_up()
    return {"job": jobs[0].pk, "finished": finished.pk, "url": url}


def pages(site: dict) -> list[str]:
    return [
        "/",
        "/?range=7d",
        "/machines/gpu-01/",
        "/machines/cpu-04/?range=7d",
        "/machines/gpu-03/",
        "/jobs/",
        f"/jobs/{site['job']}/",
        f"/jobs/{site['finished']}/",
        "/jobs/new/",
        "/economics/",
        "/economics/machines/gpu-01/",
        "/economics/plan/",
        "/reports/",
        "/reports/machines/gpu-01/",
        "/alerts/",
        "/alerts/rules/new/",
        "/account/tokens/",
        "/api/v1/docs",
        "/admin/",
        "/admin/jobs/job/",
    ]


READY = {"/api/v1/docs": "#swagger-ui .opblock"}


def open_context(browser, viewport: str, theme: str, strict: bool = False):
    """A fresh browser profile; ``strict`` enforces the pages' CSP, which forbids the eval that
    Playwright's wait_for_function needs, so only tests that never call it ask for it."""
    context = browser.new_context(
        viewport=VIEWPORTS[viewport], timezone_id=BROWSER_ZONE, color_scheme=theme, bypass_csp=not strict
    )
    context.add_init_script(WATCH)
    return context


def log_in(page, base: str, then: str = "/account/tokens/") -> None:
    """Log in and land on a light page, whose requests are all done before the next navigation."""
    page.goto(base + "/login/?next=" + then)
    page.fill("#id_username", "admin")
    page.fill("#id_password", "admin-pass")
    page.click("button[type=submit]")
    page.wait_for_url(base + then, wait_until="networkidle")


def charts_settled(page, timeout_s: float = 15.0) -> list[dict]:
    """The charts' state once every one on screen is drawn or explained (or the time is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = page.evaluate(CHARTS)
        if all(c["ok"] for c in state) or time.monotonic() > deadline:
            return state
        page.wait_for_timeout(200)


@pytest.mark.parametrize("theme", ["light", "dark"])
@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_every_page_loads_cleanly_fits_the_screen_and_explains_every_chart(site, browser, viewport, theme):
    base = site["url"]
    context = open_context(browser, viewport, theme, strict=True)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    page.on("console", lambda msg: msg.type == "error" and problems.append(f"console: {msg.text}"))
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url} {r.failure}"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"))
    page.on("request", lambda r: r.url.startswith(("http:", "https:")) and not r.url.startswith(base)
            and problems.append(f"other origin: {r.url}"))  # fmt: skip
    log_in(page, base)
    assert page.evaluate("document.documentElement.dataset.theme") == theme  # the browser's setting, until toggled
    for path in pages(site):
        page.goto(base + path, wait_until="networkidle")
        if path in READY:  # drawn after a pause in the network (a large script parsed, then a fetch)
            page.wait_for_selector(READY[path])
        charts = charts_settled(page)
        assert [c["id"] for c in charts if not c["ok"]] == [], f"{path}: charts with neither data nor a note"
        assert page.evaluate("window.__violations") == [], f"{path}: CSP violations"
        if viewport == "phone":
            widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert widths[0] <= widths[1], f"{path}: the page is {widths[0]} px wide on a {widths[1]} px screen"
        assert problems == [], f"{path}: {problems}"
    if (viewport, theme) != ("desktop", "dark"):
        shoot(page, base, {"desktop": "", "phone": "-phone"}[viewport] + ("-dark" if theme == "dark" else ""))
    context.close()


def shoot(page, base: str, suffix: str) -> None:
    """The README's pictures (into docs/screenshots only with UPDATE_SCREENSHOTS=1): the first
    screenful of each page, which keeps a PNG under about 300 KB."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("t => localStorage.setItem('theme', t)", "dark" if suffix.endswith("-dark") else "light")
    for name, path in (("fleet", "/"), ("machine", "/machines/gpu-01/"), ("submit", "/jobs/new/?template=train")):
        page.goto(base + path, wait_until="networkidle")
        charts_settled(page)
        page.wait_for_timeout(400)  # the last relayout
        page.screenshot(path=str(SCREENSHOTS / f"{name}{suffix}.png"), type="png")


def test_seven_days_of_a_machine_with_thirty_minutes_of_data_are_drawn_with_a_note(site, browser):
    context = open_context(browser, "desktop", "light")
    page = context.new_page()
    log_in(page, site["url"])
    page.goto(site["url"] + "/machines/cpu-04/?range=7d", wait_until="networkidle")
    charts_settled(page)
    assert page.evaluate("document.getElementById('chart-cpu').data[0].x.length") >= 100
    assert "of data in this range: drawn from 10 s windows" in page.inner_text("#range-note")
    assert page.locator("#range-note").is_visible()
    # The job that ran there is marked on every chart.
    texts = page.evaluate("document.getElementById('chart-load').layout.annotations.map(a => a.text)")
    assert f"▶ #{site['finished']}" in texts and f"■ #{site['finished']}" in texts
    context.close()


def test_the_range_picker_keeps_presets_custom_ranges_zoom_and_refresh_in_the_url(site, browser):
    base = site["url"]
    context = open_context(browser, "desktop", "light")
    page = context.new_page()
    log_in(page, base)
    page.goto(base + "/machines/gpu-01/", wait_until="networkidle")
    charts_settled(page)
    for preset in ("15m", "6h", "30d"):
        page.click(f"#range-picker button[data-range='{preset}']")
        assert f"range={preset}" in page.url
        page.wait_for_function(f"document.getElementById('chart-gpu-util').layout.uirevision === '{preset}'")
    # Drag across the CPU chart: that stretch becomes the page's range, in the URL to share.
    page.click("#range-picker button[data-range='1h']")
    page.wait_for_function("document.getElementById('chart-cpu').layout.uirevision === '1h'")
    # A real drag with the mouse, as a reader zooms: press on Plotly's drag surface at 30 % of the
    # plot's width, move to 60 % in steps, release. Plotly draws its zoom box and ends in a relayout
    # of the x range (the y axis is fixed), which the picker turns into the page's range. The chart
    # lies below the first screenful: scrolled into view first, since the mouse works in viewport
    # coordinates and a press outside the viewport reaches no element (no event fires at all).
    assert page.evaluate("(el => [el._fullLayout.dragmode, el._fullLayout.xaxis.fixedrange])"
                         "(document.getElementById('chart-cpu'))") == ["zoom", False]  # fmt: skip
    axis = page.evaluate("document.getElementById('chart-cpu')._fullLayout.xaxis.range.map(s => s.replace(' ', 'T'))")
    shown = datetime.fromisoformat(axis[1]) - datetime.fromisoformat(axis[0])
    surface = page.locator("#chart-cpu .draglayer .nsewdrag")
    surface.scroll_into_view_if_needed()
    box = surface.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 0.3 * box["width"], y)
    page.mouse.down()
    page.mouse.move(box["x"] + 0.6 * box["width"], y, steps=10)
    page.mouse.up()
    page.wait_for_url("**from=**")
    query = page.evaluate("Object.fromEntries(new URLSearchParams(location.search))")
    span = datetime.fromisoformat(query["to"].replace("Z", "+00:00")) - datetime.fromisoformat(
        query["from"].replace("Z", "+00:00")
    )
    assert timedelta(minutes=10) < span < timedelta(minutes=30)  # 30 % of an hour
    assert abs(span / shown - 0.3) < 0.02  # the dragged stretch, to a few pixels
    page.wait_for_function("document.getElementById('chart-gpu-power').layout.uirevision.includes('/')")
    # The shared link opens on the same range, custom fields filled in.
    shared = page.url
    page.goto(shared, wait_until="networkidle")
    assert page.locator("details.custom-range").get_attribute("open") is not None
    # In the app's one format, local and 24 h, not the browser locale's (11/30/2026, 12:18 AM).
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", page.input_value("#range-custom input[name=from]"))
    assert page.get_attribute("#range-custom input[name=from]", "type") == "text"
    # Auto-refresh off is part of the link too.
    page.uncheck("#auto-refresh")
    assert "refresh=off" in page.url
    # A custom range typed in.
    page.fill("#range-custom input[name=from]", "2026-01-02 00:00")
    page.fill("#range-custom input[name=to]", "2026-01-01 00:00")
    page.click("#range-custom button[type=submit]")
    assert page.inner_text("#range-custom .field-error") == "must be later than From"
    page.fill("#range-custom input[name=from]", "2026-01-01 00:00")
    page.fill("#range-custom input[name=to]", "2026-01-02 00:00")
    page.click("#range-custom button[type=submit]")
    page.wait_for_url("**from=2025-12-31T13%3A30**")  # midnight in Adelaide (UTC+10:30) is 13:30 UTC
    # Marks: the jobs' starts on every chart, throttled windows on the clock chart, the XID rise.
    page.click("#range-picker button[data-range='1h']")
    for chart in ("chart-cpu", "chart-gpu-util", "chart-gpu-sm-clock"):
        page.wait_for_function(f"document.getElementById('{chart}').layout.uirevision === '1h'")
    texts = page.evaluate("document.getElementById('chart-cpu').layout.annotations.map(a => a.text)")
    assert f"▶ #{site['job']}" in texts
    assert "XID" in page.evaluate("document.getElementById('chart-gpu-util').layout.annotations.map(a => a.text)")
    assert page.evaluate(
        "document.getElementById('chart-gpu-sm-clock').data.some(t => t.name === 'Throttled' && t.x.length)"
    )
    assert page.locator("#machine-cores .core").count() == 8
    context.close()


def test_the_theme_toggle_is_remembered_and_the_phone_navigation_collapses(site, browser):
    base = site["url"]
    context = open_context(browser, "phone", "light")
    page = context.new_page()
    log_in(page, base)
    assert page.locator("#nav-links").is_hidden()
    page.click("#nav-toggle")
    assert page.locator("#nav-links a[href='/jobs/']").is_visible()
    page.click("#theme-toggle")
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    page.goto(base + "/jobs/", wait_until="networkidle")
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(15, 18, 22)"
    assert page.evaluate("document.querySelector('link[rel=icon]').href").endswith("/static/favicon.svg")
    context.close()


def test_the_submit_form_shows_every_error_at_once_next_to_its_field(site, browser):
    base = site["url"]
    context = open_context(browser, "desktop", "light")
    page = context.new_page()
    log_in(page, base)
    page.goto(base + "/jobs/new/?template=train", wait_until="networkidle")
    page.fill("#id_name", "")
    page.fill("#id_gpus", "-1")
    page.fill("#id_gpu_memory_gb", "1e12")
    page.click("button[type=submit].primary")
    page.wait_for_load_state("networkidle")
    for field, words in (("name", "required"), ("gpus", "must be 0 or more"), ("gpu_memory_gb", "at most 4,096 GiB")):
        assert words in page.inner_text(f"#field-{field} .errorlist"), field
    # A job no machine could take is refused with the reason, and the form says so before submitting.
    page.fill("#id_name", "too-big")
    page.select_option("#id_machine", "gpu-01")
    page.fill("#id_gpus", "64")
    page.fill("#id_gpu_memory_gb", "80")
    page.locator("#id_gpus").dispatch_event("change")
    page.wait_for_function(
        "document.getElementById('placement-text').textContent.startsWith('Can never run: gpu-01 has 4 GPUs')"
    )
    page.select_option("#id_machine", "cpu-04")
    page.wait_for_function("document.getElementById('id_gpus').value === '0'")  # a CPU machine: no GPUs
    page.wait_for_function("document.getElementById('placement-text').textContent === 'Could start now on: cpu-04'")
    context.close()


def test_a_lost_jobs_duration_stops_at_its_last_heartbeat(site, db):
    from dashboard.jobs import service

    job = Job.objects.get(pk=site["job"])
    beat = datetime.now(UTC) - timedelta(hours=2)  # past JOB_SILENT_LOST_AFTER_S: unreachable, then lost
    Job.objects.filter(pk=job.pk).update(heartbeat_at=beat)
    assert job.pk in service.mark_lost() + service.mark_lost()  # by way of unreachable, in one pass or two
    job.refresh_from_db()
    assert (job.status, job.finished_at) == ("lost", beat)
    assert JobAttempt.objects.get(job=job, number=1).ended_at == beat


def test_the_api_docs_come_from_this_server(site, browser):
    context = open_context(browser, "desktop", "light", strict=True)
    page = context.new_page()
    log_in(page, site["url"])
    page.goto(site["url"] + "/api/v1/docs", wait_until="networkidle")
    page.wait_for_selector("#swagger-ui .opblock")
    assert page.locator("#swagger-ui .opblock").count() > 10
    assert json.loads(page.evaluate("JSON.stringify(window.__violations)")) == []
    context.close()
