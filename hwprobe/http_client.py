"""The agent's one HTTP client: standard library ``http.client`` over http or https, JSON helpers.

Every outbound request of the agent goes through :func:`request`: delivery to the dashboard
(:mod:`hwprobe.client`), the job worker's API calls (:mod:`hwprobe.executor`) and scrapes of
serving engines (:mod:`hwprobe.engines.prometheus`). Network trouble never raises: it comes back
as ``status=None`` with the reason, so each caller applies its own retry policy to one shape.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from hwprobe import __version__

USER_AGENT = f"hwprobe/{__version__}"
MAX_BODY_BYTES = 1_000_000


@dataclass
class Response:
    """One exchange: HTTP status (None: no reply), body bytes (cut at the caller's limit), reason."""

    status: int | None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case
    error: str | None = None  # no reply: why; non-2xx: the server's ``error``/``detail`` or text
    truncated: bool = False  # the body was longer than the limit and was cut there

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return self.status is not None and 200 <= self.status < 300

    def json(self) -> dict[str, Any] | None:
        """The body as a JSON object, or None when it is empty, not JSON, or not an object."""
        return _json_object(self.body)

    def retry_after_s(self) -> float | None:
        """Retry-After in seconds, or None when absent or an HTTP date (own backoff then)."""
        raw = self.headers.get("retry-after")
        try:
            return float(raw) if raw else None
        except ValueError:
            return None


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _error_text(status: int, raw: bytes) -> str:
    """What a non-2xx reply says: its JSON ``error`` (or Ninja's ``detail``), its text, or the status."""
    parsed = _json_object(raw) or {}
    detail = parsed.get("error") or parsed.get("detail")
    if detail:
        return str(detail)
    return raw[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"


def check_url(url: str) -> None:
    """Raise ValueError unless ``url`` is an absolute http(s) URL with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL, not {url!r}")


def request(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
    max_bytes: int = MAX_BODY_BYTES,
) -> Response:
    """Send one request (a new connection each time, closed after); never raises for network trouble."""
    check_url(url)
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname or "", parts.port, timeout=timeout_s)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(method, path, body=body, headers={"User-Agent": USER_AGENT, **(headers or {})})
        reply = conn.getresponse()
        raw = reply.read(max_bytes + 1)
        status = reply.status
        reply_headers = {name.lower(): value for name, value in reply.getheaders()}
    except (OSError, http.client.HTTPException) as err:
        return Response(None, error=f"{type(err).__name__}: {err}")
    finally:
        conn.close()
    truncated = len(raw) > max_bytes
    raw = raw[:max_bytes]
    error = None if 200 <= status < 300 else _error_text(status, raw)
    return Response(status, raw, reply_headers, error, truncated)


def get(
    url: str, headers: dict[str, str] | None = None, timeout_s: float = 10.0, max_bytes: int = MAX_BODY_BYTES
) -> Response:
    """``GET url``; see :func:`request`."""
    return request("GET", url, headers=headers, timeout_s=timeout_s, max_bytes=max_bytes)


def send_json(
    method: str, url: str, document: Any = None, token: str | None = None, timeout_s: float = 10.0
) -> Response:
    """A JSON request (no body when ``document`` is None) with an optional bearer token.

    Raises ValueError for a document JSON cannot carry (NaN, infinity): that is the caller's bug,
    not the network's.
    """
    headers = {"Accept": "application/json"}
    body = None
    if document is not None:
        body = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return request(method, url, body=body, headers=headers, timeout_s=timeout_s)
