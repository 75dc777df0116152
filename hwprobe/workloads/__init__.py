"""Built-in workloads: ``python -m hwprobe.workloads train|serve``, so that the whole job loop
works on any machine with nothing to download (numpy; PyTorch on a GPU when installed).

* ``train`` trains a tiny character-level minGRU language model (:mod:`.mingru`) on the text
  shipped in ``texts/`` and saves it (``.npz``) to ``--out``;
* ``serve`` answers ``POST /generate`` with such a model, exposes Prometheus ``/metrics`` and can
  load itself with ``--load N`` concurrent request loops.

Both run for ``--seconds`` (default 60; 0 means until stopped) and stop cleanly on SIGTERM or
SIGINT (``train`` saves its model first).

Progress lines
--------------
About once a second each workload prints one line to stdout, a fixed tag then ``key=value``
pairs separated by single spaces (keys are ``[a-z_]+``, values have no spaces)::

    HWPROBE_PROGRESS kind=train step=120 tokens=245760 elapsed_s=12.0 tokens_per_s=20480.3 loss=2.314
    HWPROBE_PROGRESS kind=serve requests=40 prompt_tokens=1600 generated_tokens=1280 elapsed_s=5.0 tokens_per_s=256.0

* ``kind``: ``train`` or ``serve``;
* ``elapsed_s``: seconds since the workload started;
* ``tokens_per_s``: tokens per second since the previous line (train: tokens trained on;
  serve: tokens generated);
* train: ``step`` optimiser steps, ``tokens`` tokens trained on, ``loss`` mean cross-entropy
  in nats per character since the previous line;
* serve: ``requests``, ``prompt_tokens``, ``generated_tokens``: totals since the start.

The last line of a run adds ``final=1``; there ``tokens_per_s`` is the average over the whole
run. Unknown keys may be added later: parsers must ignore them. :func:`parse_progress` reads
a line back.
"""

from __future__ import annotations

TAG = "HWPROBE_PROGRESS"


def progress_line(kind: str, **fields: object) -> str:
    """One progress line: ``TAG kind=<kind> key=value ...`` (floats with a fixed precision)."""
    parts = [TAG, f"kind={kind}"]
    for key, value in fields.items():
        if isinstance(value, float):
            value = f"{value:.3f}" if key == "loss" else f"{value:.1f}"
        parts.append(f"{key}={value}")
    return " ".join(parts)


def parse_progress(line: str) -> dict[str, str | int | float] | None:
    """The fields of a progress line (numbers converted), or None if ``line`` is not one."""
    words = line.strip().split(" ")
    if not words or words[0] != TAG:
        return None
    fields: dict[str, str | int | float] = {}
    for word in words[1:]:
        key, sep, raw = word.partition("=")
        if not sep:
            continue
        value: str | int | float = raw
        try:
            value = int(raw)
        except ValueError:
            try:
                value = float(raw)
            except ValueError:
                pass
        fields[key] = value
    return fields
