"""Loaded by pytest before Django (``-p dashboard.testenv``): tests never touch the developer's ./data."""

import os
import tempfile
from urllib.parse import urlsplit, urlunsplit

os.environ.setdefault("DASHBOARD_DATA_DIR", tempfile.mkdtemp(prefix="hwdash-test-"))
# Agents started by tests do not write the 256 MiB scratch file that measures the drive's read
# speed; the one test of that measurement turns it back on.
os.environ.setdefault("HWPROBE_STORAGE_PROBE", "0")


def _redis_for_worker(url: str, worker: str) -> str:
    """REDIS_URL with the database number counted down by the xdist worker's index (gw1: 15 -> 14)."""
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(base - int(worker.removeprefix('gw'))) % 16}"))


# Under pytest-xdist (`-n 2`) pytest-django gives each worker its own test database; Redis gets its
# own database number too, so one worker's login throttling counts, cache and queues are not seen
# by the other's tests. Processes the tests start inherit the rewritten URL.
if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("REDIS_URL"):
    os.environ["REDIS_URL"] = _redis_for_worker(os.environ["REDIS_URL"], os.environ["PYTEST_XDIST_WORKER"])
