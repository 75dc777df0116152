"""The hardware catalogue: the shipped CSV, which accelerator names each row describes, lookups."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

CSV_PATH = Path(__file__).resolve().parent / "data" / "ai_hardware_facts.csv"

# Which names the agent reports (NVML's or ioreg's) each shipped row describes. NVML calls an
# H100 SXM "NVIDIA H100 80GB HBM3" and an A100 SXM "NVIDIA A100-SXM4-80GB".
MATCH_PATTERNS = {
    "NVIDIA H100 SXM (80GB HBM3)": r"H100.*(SXM|HBM3\b)",
    "NVIDIA H100 PCIe (80GB HBM2e)": r"H100.*(PCIe|HBM2e)",
    "NVIDIA H200 (SXM, 141GB HBM3e)": r"H200",
    "NVIDIA A100 80GB SXM": r"A100.*SXM4?.*80GB|A100.*80GB.*SXM",
    "NVIDIA A100 80GB PCIe": r"A100.*80GB.*PCIe|A100-PCIE-80GB",
    "NVIDIA L40S": r"L40S",
    "NVIDIA GeForce RTX 4090": r"RTX 4090",
    "NVIDIA GeForce RTX 3090": r"RTX 3090(?! Ti)",
    "NVIDIA GeForce RTX 5090": r"RTX 5090",
    "Apple M2 Ultra": r"M2 Ultra",
    "Apple M3 Max": r"M3 Max",
    "Apple M4 Max": r"M4 Max",
    "Apple M3 Ultra": r"M3 Ultra",
}


def _number(cell: str) -> float | None:
    cell = cell.strip()
    return float(cell) if cell else None  # an empty cell is unknown, never 0


def shipped_rows(path: Path = CSV_PATH) -> list[dict[str, Any]]:
    """The CSV as HardwareSpec field dicts."""
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            name = row["name"].strip()
            rows.append(
                {
                    "name": name,
                    "match_pattern": MATCH_PATTERNS.get(name, re.escape(name)),
                    "memory_gb": _number(row["memory_gb"]),
                    "bandwidth_gb_s": _number(row["memory_bandwidth_gb_s"]),
                    "bf16_tflops": _number(row["fp16_dense_tflops"]),
                    "tdp_watts": _number(row["tdp_w"]),
                    "launch_price_usd": _number(row["launch_price_usd"]),
                    "source_url": row["source"].strip(),
                    "notes": row["notes"].strip(),
                    "shipped": True,
                }
            )
    return rows


def match(name: str, specs: Iterable[Any]) -> Any | None:
    """The spec describing accelerator ``name``: the user's rows first, then the most specific pattern."""
    candidates = [s for s in specs if _matches(s.match_pattern, name)]
    if not candidates:
        return None
    candidates.sort(key=lambda s: (s.shipped, -len(s.match_pattern)))
    return candidates[0]


@lru_cache(maxsize=4096)
def _matches(pattern: str, name: str) -> bool:
    # Cached: the fleet's money chart prices every accelerator of every machine, each against every
    # row (1,000 machines x 8 GPUs x 13 rows, twice: 0.4 s of regex searches for a dozen names).
    try:
        return re.search(pattern, name, re.IGNORECASE) is not None
    except re.error:
        return False
