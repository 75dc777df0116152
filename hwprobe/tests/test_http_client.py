"""The agent's one HTTP client against real servers on 127.0.0.1, over http and https."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hwprobe import http_client
from hwprobe.client import IngestClient
from hwprobe.engines import prometheus
from hwprobe.tests.conftest import free_port


class Echo(BaseHTTPRequestHandler):
    """Answers every request with what it received; ``/status/N`` answers status N."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/status/"):
            status = int(self.path.rsplit("/", 1)[1])
            raw = json.dumps({"error": f"refused with {status}"}).encode()
        elif self.path == "/big":
            status, raw = 200, b"x" * 5000
        else:
            status = 200
            raw = json.dumps(
                {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body.decode()}
            ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Retry-After", "7")
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = _answer  # noqa: N815 - http.server's naming

    def log_message(self, *args: Any) -> None:
        pass


def serve(context: ssl.SSLContext | None = None) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{'https' if context else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def plain() -> Iterator[str]:
    yield from serve()


@pytest.fixture
def cert(tmp_path: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 (and its key, in the same PEM file)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    pem = tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(pem), "-out", str(tmp_path / "crt.pem")],
        check=True,
        capture_output=True,
    )
    pem.write_text(pem.read_text() + (tmp_path / "crt.pem").read_text())
    return pem


@pytest.fixture
def tls(cert: Path) -> Iterator[str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert)
    yield from serve(context)


def test_a_json_post_carries_the_token_the_agent_and_the_body(plain: str) -> None:
    response = http_client.send_json("POST", plain + "/x?y=1", {"a": 1}, token="tok")
    assert response.ok and response.status == 200
    echoed = response.json()
    assert echoed is not None
    assert echoed["method"] == "POST" and echoed["path"] == "/x?y=1" and json.loads(echoed["body"]) == {"a": 1}
    assert echoed["headers"]["Authorization"] == "Bearer tok"
    assert echoed["headers"]["User-Agent"].startswith("hwprobe/")
    assert echoed["headers"]["Content-Type"] == "application/json"


def test_a_refusal_says_the_servers_error_and_its_retry_after(plain: str) -> None:
    response = http_client.get(plain + "/status/429")
    assert response.status == 429 and not response.ok
    assert response.error == "refused with 429" and response.retry_after_s() == 7.0


def test_no_server_is_status_none_with_the_reason_never_an_exception() -> None:
    response = http_client.get(f"http://127.0.0.1:{free_port()}/", timeout_s=2)
    assert response.status is None and response.error is not None and "Connection" in response.error


def test_a_body_over_the_limit_is_cut_and_flagged(plain: str, monkeypatch: pytest.MonkeyPatch) -> None:
    response = http_client.get(plain + "/big", max_bytes=1000)
    assert response.truncated and len(response.body) == 1000
    monkeypatch.setattr(prometheus, "MAX_BODY", 1000)
    with pytest.raises(ValueError, match="larger than 1000 bytes"):
        prometheus.fetch(plain + "/big", timeout_s=2)


def test_only_http_and_https_urls_are_taken() -> None:
    for url in ("ftp://h/x", "/relative", "http:///nohost"):
        with pytest.raises(ValueError):
            http_client.get(url)


def test_https_verifies_the_certificate(tls: str) -> None:
    response = http_client.get(tls + "/", timeout_s=5)
    assert response.status is None and "CERTIFICATE_VERIFY_FAILED" in (response.error or "")


def test_https_works_for_ingest_and_scrapes_once_the_certificate_is_trusted(
    tls: str, cert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenSSL's default verify paths honour SSL_CERT_FILE, as on a host with a private CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    reply = IngestClient(tls, "tok").post({"samples": []})
    assert reply.status == 200 and reply.body is not None and reply.body["path"] == "/api/v1/ingest"
    assert json.loads(prometheus.fetch(tls + "/metrics", timeout_s=5))["method"] == "GET"
