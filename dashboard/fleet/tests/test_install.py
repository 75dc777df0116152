"""The one line that adds a machine: /agent/install.sh, the wheel it fetches, and who prints the line."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from dashboard.fleet.models import AgentToken, Machine, SystemSample
from dashboard.fleet.tests.test_agent_end_to_end import Server, free_port, wait_for
from hwprobe.tests.conftest import dependency_wheels

WHEEL = "hwprobe-0.1.0-py3-none-any.whl"


@pytest.fixture
def prebuilt(settings, tmp_path: Path) -> Path:
    """AGENT_WHEEL_DIR with a stand-in wheel file (these tests check serving, not building)."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    (folder / WHEEL).write_bytes(b"PK wheel bytes")
    settings.AGENT_WHEEL_DIR = str(folder)
    return folder


@pytest.mark.django_db
def test_the_script_needs_no_login_and_names_this_server_and_the_wheel(client, prebuilt: Path, settings) -> None:
    settings.ALLOWED_HOSTS = ["dash.example"]
    response = client.get("/agent/install.sh", HTTP_HOST="dash.example:8000")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    script = response.content.decode()
    assert script.startswith("#!/bin/sh\n")
    assert "\nSERVER=http://dash.example:8000\n" in script
    assert f"\nWHEEL_URL=http://dash.example:8000/agent/{WHEEL}\n" in script and f"\nWHEEL_NAME={WHEEL}\n" in script


@pytest.mark.django_db
def test_the_script_is_posix_sh(client, prebuilt: Path, tmp_path: Path) -> None:
    script = tmp_path / "install.sh"
    script.write_bytes(client.get("/agent/install.sh").content)
    for shell in ("sh", "dash", "bash"):
        if shutil.which(shell):
            checked = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True)
            assert checked.returncode == 0, (shell, checked.stderr)


@pytest.mark.django_db
def test_the_script_refuses_to_run_without_a_token(client, prebuilt: Path) -> None:
    script = client.get("/agent/install.sh").content
    ran = subprocess.run(["sh", "-s", "--", "--root", "/nonexistent"], input=script, capture_output=True, timeout=30)
    assert ran.returncode == 1 and b"--token is required" in ran.stderr


@pytest.mark.django_db
def test_the_wheel_is_served_by_name_and_as_hwprobe_whl_only(client, prebuilt: Path) -> None:
    for name in (WHEEL, "hwprobe.whl"):
        response = client.get(f"/agent/{name}")
        assert response.status_code == 200 and b"".join(response.streaming_content) == b"PK wheel bytes"
        assert WHEEL in response["Content-Disposition"]
    assert client.get("/agent/hwprobe-0.0.1-py3-none-any.whl").status_code == 404
    assert client.post("/agent/install.sh").status_code == 405


@pytest.mark.django_db
def test_an_empty_wheel_folder_is_a_503_that_says_why(client, prebuilt: Path) -> None:
    (prebuilt / WHEEL).unlink()
    response = client.get("/agent/install.sh")
    assert response.status_code == 503 and b"AGENT_WHEEL_DIR" in response.content


@pytest.mark.django_db
def test_enroll_prints_the_install_line_with_the_server_and_the_new_token() -> None:
    out = StringIO()
    call_command("enroll", "gpu-08", "--server", "https://dash.example/", stdout=out)
    lines = out.getvalue().strip().splitlines()
    token = lines[-1]
    assert AgentToken.authenticate(token).machine.name == "gpu-08"
    assert (
        f"  curl -fsSL https://dash.example/agent/install.sh | sh -s -- --server https://dash.example --token {token}"
        in lines
    )


@pytest.mark.django_db
def test_the_admin_add_page_shows_the_install_line_once(client, admin_user, settings) -> None:
    settings.ALLOWED_HOSTS = ["dash.example"]
    client.force_login(admin_user)
    response = client.post(
        "/admin/fleet/machine/add/",
        {
            "name": "gpu-09",
            "policy": Machine.Policy.SHARED,
            **{
                f"{inline}-{field}": 0
                for inline in ("accelerators", "tokens")
                for field in ("TOTAL_FORMS", "INITIAL_FORMS")
            },
        },
        HTTP_HOST="dash.example",
        follow=True,
    )
    page = response.content.decode()
    [token] = re.findall(r"--token (hwa_\S+?)(?:<|\s|&)", page)
    assert AgentToken.authenticate(token).machine == Machine.objects.get(name="gpu-09")
    assert "curl -fsSL http://dash.example/agent/install.sh | sh -s -- --server http://dash.example" in page
    assert token not in client.get("/admin/fleet/machine/").content.decode()


# ---- end to end: a real server builds and serves the wheel, the script installs it --------------


@pytest.fixture
def server(process_env, tmp_path: Path):
    # Its own data folder: the wheel is built from this checkout on the first request, as in use.
    env = dict(process_env, DASHBOARD_DATA_DIR=str(tmp_path / "data"))
    s = Server(env, free_port())
    s.start()
    yield s
    s.stop()


@pytest.mark.slow
@pytest.mark.integration
def test_one_line_installs_an_agent_into_a_root_that_reports_to_the_server(
    server, machine, tmp_path: Path, process_env
) -> None:
    token = machine.issue_token()
    root = tmp_path / "root"
    # The dependencies come from a local folder: the test stays fast and needs no package index.
    pip_args = f"--no-index --find-links {dependency_wheels(tmp_path / 'wheels')}"
    line = (
        f"curl -fsSL {server.url}/agent/install.sh | sh -s -- --server {server.url} --token {token} "
        f"--root {root} --pip-args {shlex.quote(pip_args)}"
    )
    ran = subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "systemctl enable --now hwprobe.service" in ran.stdout and "hwprobe-worker" not in ran.stdout

    venv = root / "opt/hwprobe/venv"
    sample = subprocess.run([str(venv / "bin/hwprobe"), "sample"], capture_output=True, text=True, timeout=120)
    assert sample.returncode == 0 and "system" in json.loads(sample.stdout)["sample"]

    token_file = root / "etc/hwprobe/token"
    assert token_file.read_text().strip() == token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    unit = (root / "etc/systemd/system/hwprobe.service").read_text()
    [exec_start] = re.findall(r"^ExecStart=(.*)$", unit, re.MULTILINE)
    argv = shlex.split(exec_start)
    assert argv == [str(venv / "bin/hwprobe"), "run", "--server", server.url, "--token-file", str(token_file)]
    assert not (root / "etc/systemd/system/hwprobe-worker.service").exists()

    # What systemd would start, started here: its samples reach the server with the stored token.
    env = dict(os.environ, HWPROBE_STATE_DIR=str(tmp_path / "state"), HWPROBE_REPORT_PORT="0")
    agent = subprocess.Popen(
        [*argv, "--interval", "0.25", "--send-every", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: SystemSample.objects.filter(machine=machine).exists(), 60, "a sample from the installed agent")
    finally:
        agent.terminate()
        agent.wait(timeout=30)
    assert time.time() - SystemSample.objects.filter(machine=machine).latest("ts").ts.timestamp() < 120
    assert sys.executable not in unit  # the unit runs the installed environment, not the test's
