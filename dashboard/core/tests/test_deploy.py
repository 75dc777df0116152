"""What deployment relies on: migrations match the models, the compose file parses, checks fire."""

from __future__ import annotations

import shutil
import subprocess
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.django_db
def test_every_model_change_has_its_migration():
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


def test_a_production_start_without_secret_key_is_refused_with_a_hint(settings):
    from dashboard.checks import secret_key_from_environment

    settings.DEBUG, settings.SECRET_KEY_FROM_ENV = False, False
    [error] = secret_key_from_environment(None)
    assert error.id == "dashboard.E001" and "SECRET_KEY" in error.hint
    settings.SECRET_KEY_FROM_ENV = True
    assert secret_key_from_environment(None) == []


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose is not installed")
def test_the_compose_file_parses(tmp_path):
    env = (ROOT / ".env.example").read_text()
    work = tmp_path / "compose"
    work.mkdir()
    (work / "docker-compose.yml").write_text((ROOT / "docker-compose.yml").read_text())
    (work / ".env").write_text(env)
    (work / "Dockerfile").write_text((ROOT / "Dockerfile").read_text())
    done = subprocess.run(
        ["docker-compose", "config", "--services"], cwd=work, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {"postgres", "redis", "web", "worker", "beat"}
