"""Settings of a long-running server process (gunicorn worker, Celery worker), applied once it
has loaded the project."""

from __future__ import annotations

import gc

# Collect the youngest generation after this many new containers instead of Python's 700.
YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Tune Python's cyclic garbage collector for a server (bench/README.md, issue 13).

    - ``gc.freeze()``: Django and the apps are loaded by now and live as long as the process.
      Frozen, they are no longer walked by the collector's full passes, which in a loaded
      process cost a request several milliseconds now and then.
    - A larger first generation: validating one 100-window batch makes ~100,000 short-lived
      containers (dicts, lists, models), and at the default threshold the collector ran ~140
      times per request and found no cycles among them. What it holds between passes stays
      small: tens of thousands of objects.

    With 100-window batches the web workers spent 28 -> 20.5 ms of CPU per request.
    """
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 20, 10)
