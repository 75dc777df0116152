"""Settings of a long-running server process (gunicorn worker, Celery worker), applied once it
has loaded the project."""

from __future__ import annotations

import gc

# Collect the youngest generation after this many new containers instead of Python's 700. Some
# of a request's garbage is freed only by the collector, so a larger figure holds more memory
# between passes: with 100-window batches a worker's memory at the end of bench/ingest.py was
# 113 MiB at 700, 123 MiB at 10,000, 163 MiB at 20,000 and 365 MiB at 50,000, for 52 %, 56 %,
# 59 % and 54-58 % of a text COPY (bench/README.md).
YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Tune Python's cyclic garbage collector for a server (bench/README.md, issue 13).

    - ``gc.freeze()``: Django and the apps are loaded by now and live as long as the process.
      Frozen, they are no longer walked by the collector's full passes, which in a loaded
      process cost a request several milliseconds now and then.
    - A larger first generation: validating one 100-window batch makes ~100,000 short-lived
      containers (dicts, lists, models), and at the default threshold the collector ran ~140
      times per request, mostly to find nothing to free. At ``YOUNG_THRESHOLD`` it runs ~10
      times, for 10 MiB more memory per worker.

    With 100-window batches the web workers spent ~23 -> ~14 ms of CPU per request.
    """
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 20, 10)
