"""GET /healthz: what Docker, docker-compose and load balancers ask before sending traffic."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import NoReturn

import pytest
from django.db import OperationalError, connections
from django.test import Client
from pytest_django.fixtures import Settings


def closed_port() -> int:
    """A local TCP port nothing listens on (bound once by us, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def broker_folders(settings: Settings, tmp_path: Path) -> dict[str, Path]:
    """Single-host mode with the filesystem transport's folders under tmp_path."""
    settings.REDIS_URL = ""
    folders = {name: tmp_path / name for name in ("queue", "processed", "control")}
    for folder in folders.values():
        folder.mkdir()
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(folders["queue"]),
        "data_folder_out": str(folders["queue"]),
        "processed_folder": str(folders["processed"]),
        "control_folder": str(folders["control"]),
    }
    return folders


@pytest.mark.django_db
def test_it_answers_ok_when_the_database_and_the_broker_answer(client: Client) -> None:
    # CI runs this with REDIS_URL (a real PING) and without it (the filesystem broker's folders).
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "broker": "ok"}


@pytest.mark.django_db
def test_a_redis_that_does_not_answer_gives_503_naming_the_broker(client: Client, settings: Settings) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{closed_port()}/0"
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "error",
        "database": "ok",
        "broker": "Redis did not answer a PING within 2 s (ConnectionError)",
    }


def test_a_database_that_does_not_answer_gives_503_naming_the_database(
    client: Client, broker_folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse() -> NoReturn:
        raise OperationalError("connection refused")

    monkeypatch.setattr(connections["default"], "cursor", refuse)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "error",
        "database": "the database did not answer a query (OperationalError)",
        "broker": "ok",
    }


@pytest.mark.django_db
def test_single_host_mode_checks_the_broker_folders(client: Client, broker_folders: dict[str, Path]) -> None:
    assert client.get("/healthz").status_code == 200
    broker_folders["processed"].rmdir()
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["broker"] == f"the broker folder {broker_folders['processed']} is missing"


@pytest.mark.django_db
def test_a_probe_by_ip_address_is_answered_though_allowed_hosts_does_not_list_it(
    client: Client, settings: Settings, broker_folders: dict[str, Path]
) -> None:
    settings.ALLOWED_HOSTS = ["dashboard.example.com"]
    settings.SECURE_SSL_REDIRECT = True  # nor is the probe redirected to HTTPS
    assert client.get("/healthz", HTTP_HOST="172.18.0.5:8000").status_code == 200
    # Every other path still validates the Host.
    assert client.get("/login/", HTTP_HOST="172.18.0.5:8000").status_code == 400


@pytest.mark.django_db
def test_it_needs_no_login_is_never_cached_and_only_reads(client: Client, broker_folders: dict[str, Path]) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert "no-store" in response["Cache-Control"]
    assert client.head("/healthz").status_code == 200
    assert client.post("/healthz").status_code == 405
