"""Loaded by pytest before Django (``-p dashboard.testenv``): tests never touch the developer's ./data."""

import os
import tempfile

os.environ.setdefault("DASHBOARD_DATA_DIR", tempfile.mkdtemp(prefix="hwdash-test-"))
# Agents started by tests do not write the 256 MiB scratch file that measures the drive's read
# speed; the one test of that measurement turns it back on.
os.environ.setdefault("HWPROBE_STORAGE_PROBE", "0")
