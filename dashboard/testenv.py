"""Loaded by pytest before Django (``-p dashboard.testenv``): tests never touch the developer's ./data."""

import os
import tempfile

os.environ.setdefault("DASHBOARD_DATA_DIR", tempfile.mkdtemp(prefix="hwdash-test-"))
