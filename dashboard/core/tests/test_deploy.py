"""What deployment relies on: migrations match the models, checks fire, and the image, the compose
file and the requirement locks keep their promises (read as data: no Docker engine is needed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import call_command
from pytest_django.fixtures import Settings

ROOT = Path(__file__).resolve().parents[3]
APP_SERVICES = ("web", "worker", "beat")
TEST_TOOLS = ("pytest", "pytest-django", "pytest-timeout", "hypothesis", "playwright", "ruff", "mypy")


def compose() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return services


def pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a requirements file, names normalised as pip does."""
    found = re.findall(r"^([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([^\s\\;]+)", path.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in found}


def filled_env() -> str:
    """The example .env with its required secrets filled in, as an operator would."""
    env = (ROOT / ".env.example").read_text()
    return env.replace("POSTGRES_PASSWORD=\n", "POSTGRES_PASSWORD=pw-for-tests\n").replace(
        "SECRET_KEY=\n", "SECRET_KEY=key-for-tests\n"
    )


@pytest.mark.django_db
def test_every_model_change_has_its_migration() -> None:
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


def test_a_production_start_without_secret_key_is_refused_with_a_hint(settings: Settings) -> None:
    from dashboard.checks import secret_key_from_environment

    settings.DEBUG, settings.SECRET_KEY_FROM_ENV = False, False
    [error] = secret_key_from_environment(None)
    assert error.id == "dashboard.E001" and "SECRET_KEY" in error.hint
    settings.SECRET_KEY_FROM_ENV = True
    assert secret_key_from_environment(None) == []


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose is not installed")
def test_the_compose_file_parses_and_refuses_an_unfilled_env(tmp_path: Path) -> None:
    work = tmp_path / "compose"
    work.mkdir()
    (work / "docker-compose.yml").write_text((ROOT / "docker-compose.yml").read_text())
    (work / "Dockerfile").write_text((ROOT / "Dockerfile").read_text())
    (work / ".env").write_text(filled_env())
    config = ["docker-compose", "config", "--services"]
    done = subprocess.run(config, cwd=work, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {"postgres", "redis", "migrate", "web", "worker", "beat"}
    (work / ".env").write_text((ROOT / ".env.example").read_text())
    done = subprocess.run(config, cwd=work, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "set it in .env" in done.stderr


def test_every_pulled_image_is_an_exact_release() -> None:
    for name, service in compose().items():
        if "build" in service:
            continue
        assert re.fullmatch(r"[a-z0-9/.-]+:\d+\.\d+(\.\d+)?(-[a-z]+)?", service["image"]), (name, service["image"])
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE)
    assert len(bases) == 1 and re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", bases[0])


def test_no_password_is_written_down_only_read_from_env() -> None:
    services = compose()
    required = "${POSTGRES_PASSWORD:?set it in .env}"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == required
    for name in ("migrate", *APP_SERVICES):
        environment = services[name]["environment"]
        assert required in environment["DATABASE_URL"]
        assert environment["SECRET_KEY"] == "${SECRET_KEY:?set it in .env}"
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^POSTGRES_PASSWORD=$", example, flags=re.MULTILINE)
    assert re.search(r"^SECRET_KEY=$", example, flags=re.MULTILINE)
    assert "DATABASE_URL=" not in example.replace("# DATABASE_URL", "")


def test_every_service_has_a_health_check_and_web_asks_healthz() -> None:
    services = compose()
    for name, service in services.items():
        if name == "migrate":
            assert service["healthcheck"] == {"disable": True}  # a one-shot: its exit code says it all
        else:
            assert service["healthcheck"]["test"], name
    assert any("/healthz" in part for part in services["web"]["healthcheck"]["test"])
    assert "inspect ping" in " ".join(services["worker"]["healthcheck"]["test"])
    assert any("celerybeat-schedule" in part for part in services["beat"]["healthcheck"]["test"])


def test_migrate_runs_once_and_the_app_waits_for_it() -> None:
    services = compose()
    migrate = services["migrate"]
    assert migrate["command"][-2:] == ["migrate", "--noinput"] and migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in APP_SERVICES:
        service = services[name]
        assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
        command = " ".join(service["command"])
        assert "migrate" not in command and "collectstatic" not in command, name


def test_the_image_runs_without_test_tools_as_a_user_with_static_files_collected_at_build() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    dockerfile = "\n".join(line for line in lines if not line.startswith("#"))  # instructions, no comments
    builder, final = dockerfile.split("\nFROM ${PYTHON_IMAGE}\n")
    assert "pip install --require-hashes --no-deps --only-binary=:all: -r /tmp/requirements.txt" in builder
    assert "manage.py collectstatic" in builder and "collectstatic" not in final
    assert "requirements-dev" not in dockerfile and "pip install" not in final
    assert not set(TEST_TOOLS) & set(pins(ROOT / "requirements.txt"))
    users = re.findall(r"^USER (\S+)$", final, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", final, flags=re.MULTILINE)
    assert "ENV " in final and "AGENT_WHEEL_DIR=/app/dist" in final


def test_the_locks_hold_what_their_inputs_pin() -> None:
    # An edited .in without a new pip-compile run (see the command at the top of each .in) fails here.
    runtime, dev = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-dev.txt")
    assert pins(ROOT / "requirements.in").items() <= runtime.items()
    assert pins(ROOT / "requirements-dev.in").items() <= dev.items()
    assert runtime.items() <= dev.items()  # development runs the production versions
    assert "plotly" not in runtime and set(TEST_TOOLS) <= set(dev)
    # The agent's own lists, while they exist, pin what the tests run.
    for path in (ROOT / "hwprobe").glob("requirements*.txt"):
        assert pins(path).items() <= dev.items(), path


def test_the_vendored_plotly_is_the_one_the_pinned_package_ships() -> None:
    from plotly.offline import get_plotlyjs_version  # type: ignore[import-untyped]

    [vendored] = (ROOT / "static" / "vendor").glob("plotly-*.min.js")
    assert vendored.name == f"plotly-{get_plotlyjs_version()}.min.js"
