"""Agent batches (docs/design.md's wire format) built from a collector's snapshots, for server tests
that ingest replayed hardware: the same aggregation the agent runs, without its loop or spool."""

from __future__ import annotations

import time
from typing import Any

from hwprobe.aggregate import Window


def batch(
    collector: Any, seqs: list[int], end_ts: float | None = None, snapshots: int = 2, interval_s: float = 10.0
) -> dict[str, Any]:
    """One batch of ``len(seqs)`` windows ``interval_s`` s apart ending at ``end_ts`` (Unix s),
    each folded from ``snapshots`` calls of ``collector.collect()``; the inventory rides along."""
    end = time.time() if end_ts is None else end_ts
    samples = []
    for i, seq in enumerate(seqs):
        close = end - interval_s * (len(seqs) - 1 - i)
        window = Window(close - interval_s)
        for _ in range(snapshots):
            window.add(collector.collect())
        samples.append({"seq": seq, **window.close(close)})
    inventory = {"hostname": "replay", "os": "Linux", "cpu_model": "", "cpu_cores": 1, "cpu_threads": 1}
    inventory.update(collector.inventory())
    return {"agent_version": "0.1.0", "dropped": 0, "inventory": inventory, "samples": samples}
