"""``hwprobe units``: the service files the install script relies on."""

from __future__ import annotations

import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hwprobe.__main__ import main
from hwprobe.units import systemd_quote, write_units


def test_it_writes_both_systemd_units_reading_the_token_from_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["units", "--server", "https://dash.example/", "--root", str(tmp_path), "--worker"]) == 0
    units = tmp_path / "etc/systemd/system"
    assert capsys.readouterr().out.split() == [str(units / "hwprobe.service"), str(units / "hwprobe-worker.service")]
    agent = (units / "hwprobe.service").read_text()
    hwprobe = Path(sys.executable).parent / "hwprobe"
    token = tmp_path / "etc/hwprobe/token"
    assert f"ExecStart={hwprobe} run --server https://dash.example --token-file {token}\n" in agent
    assert "Restart=always" in agent and "NoNewPrivileges=yes" in agent and "\nPrivateDevices=" not in agent
    worker = (units / "hwprobe-worker.service").read_text()
    assert f"ExecStart={hwprobe} worker --server https://dash.example --token-file {token}\n" in worker
    assert "Restart=always" in worker


def test_without_worker_only_the_agent_unit_is_written(tmp_path: Path) -> None:
    [path] = write_units(tmp_path, "http://h:8000", tmp_path / "t", launchd=False)
    assert path.name == "hwprobe.service" and oct(path.stat().st_mode & 0o777) == "0o644"


def test_systemd_arguments_are_quoted_and_not_expanded() -> None:
    assert systemd_quote("/opt/hwprobe/venv/bin/hwprobe") == "/opt/hwprobe/venv/bin/hwprobe"
    assert systemd_quote("/tmp/a b") == '"/tmp/a b"'
    assert systemd_quote("http://h/?x=%41&y=$HOME") == "http://h/?x=%%41&y=$$HOME"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    paths = write_units(tmp_path, "http://h:8000", tmp_path / "token", worker=True, executable=Path("/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", *map(str, paths)], capture_output=True, text=True, timeout=60)
    # Lines about the host's own units (or its missing systemd) are not ours to judge.
    ours = [line for line in result.stderr.splitlines() if "hwprobe" in line]
    assert not ours, result.stderr


def test_launchd_plists_parse_and_run_the_same_commands(tmp_path: Path) -> None:
    paths = write_units(tmp_path, "http://h:8000/?a=1&b=2", tmp_path / "a b/token", worker=True, launchd=True)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "Library/LaunchDaemons/org.hwprobe.agent.plist",
        "Library/LaunchDaemons/org.hwprobe.worker.plist",
    ]
    agent = plistlib.loads(paths[0].read_bytes())
    assert agent["Label"] == "org.hwprobe.agent" and agent["KeepAlive"] is True and agent["RunAtLoad"] is True
    assert agent["ProgramArguments"][1:] == [
        "run",
        "--server",
        "http://h:8000/?a=1&b=2",
        "--token-file",
        f"{tmp_path}/a b/token",
    ]
    assert plistlib.loads(paths[1].read_bytes())["ProgramArguments"][1] == "worker"
