"""The agent as a package: ``pip wheel .`` builds it, and it runs alone in a fresh environment."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from hwprobe.tests.conftest import REPO, dependency_wheels

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m pip wheel . --no-deps -w dist`` in a clean copy of the checkout: setuptools
    builds in the source tree, and a build/ left there must not leak into the next wheel."""
    src = tmp_path_factory.mktemp("src")
    shutil.copy2(REPO / "pyproject.toml", src)
    shutil.copytree(REPO / "hwprobe", src / "hwprobe", ignore=shutil.ignore_patterns("__pycache__", "fixtures"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--quiet", "-w", "dist"],
        cwd=src,
        check=True,
        capture_output=True,
        timeout=600,
    )
    [built] = (src / "dist").glob("hwprobe-*.whl")
    return built


def test_the_wheel_holds_the_agent_and_its_data_but_no_tests(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "hwprobe/__main__.py" in names and "hwprobe/http_client.py" in names
    assert "hwprobe/workloads/texts/coriolanus.txt" in names
    assert {"hwprobe/units/hwprobe.service", "hwprobe/units/hwprobe-worker.service"} <= set(names)
    assert "hwprobe/units/launchd.plist" in names
    assert not [n for n in names if n.startswith(("hwprobe/tests/", "hwprobe/testing/"))]
    assert not [n for n in names if not n.startswith(("hwprobe/", "hwprobe-"))]
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA"))).decode()
    assert (
        "Requires-Dist: psutil==7.2.2" in metadata
        and 'numpy==2.4.6; extra == "worker"' in metadata
        and "celery" not in metadata
    )
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/entry_points.txt"))).decode()
    assert "hwprobe = hwprobe.__main__:main" in entry_points


def test_a_fresh_environment_with_only_the_wheel_samples_and_has_no_django(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python, script = env_dir / "bin" / "python", env_dir / "bin" / "hwprobe"
    cache = dependency_wheels(tmp_path / "wheels")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(cache), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # Run outside the checkout, so that nothing is imported from the repository by accident.
    sample = subprocess.run([str(script), "sample"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert sample.returncode == 0, sample.stderr
    document = json.loads(sample.stdout)
    assert document["inventory"]["cpu_threads"] and document["sample"]["system"]["mem_total_bytes"] > 0
    for module in ("django", "hwprobe.testing", "hwprobe.tests"):
        probe = subprocess.run([str(python), "-c", f"import {module}"], cwd=tmp_path, capture_output=True, text=True)
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, module
    installed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, check=True
    )
    names = {p["name"].lower() for p in json.loads(installed.stdout)}
    assert names - {"pip", "setuptools"} == {"hwprobe", "psutil", "nvidia-ml-py"}
