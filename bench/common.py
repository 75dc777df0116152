"""Helpers shared by the bench scripts: a throwaway PostgreSQL database, Django set-up, batches, stats.

Every script creates its own database (never the developer's or the tests'), migrates it, and
drops it on the way out, Ctrl-C included.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# BENCH_ROOT: measure another copy of the project (e.g. an older ingest.py) with these scripts.
ROOT = Path(os.environ.get("BENCH_ROOT") or Path(__file__).resolve().parent.parent).resolve()
PYTHON = sys.executable
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")

sys.path.insert(0, str(ROOT))

from dashboard.core import stats  # noqa: E402  (needs ROOT on the path)


def say(message: str) -> None:
    print(f"bench | {message}", flush=True)


def db_url(name: str) -> str:
    return f"{PG}/{name}"


def _admin_conn():
    import psycopg

    return psycopg.connect(db_url("postgres"), autocommit=True)


def drop_database(name: str) -> None:
    with _admin_conn() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def bench_database(name: str) -> Iterator[str]:
    """Create database NAME (dropping a leftover), migrate it, yield its URL, drop it at the end."""
    drop_database(name)
    with _admin_conn() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = db_url(name)
    try:
        t0 = time.perf_counter()
        subprocess.run(
            [PYTHON, str(ROOT / "manage.py"), "migrate", "-v", "0"],
            cwd=ROOT,
            env=bench_env(url),
            check=True,
        )
        say(f"database {name} created and migrated in {time.perf_counter() - t0:.1f} s")
        yield url
    finally:
        # Django's persistent connection in this process would block DROP without FORCE.
        try:
            from django.db import connections

            connections.close_all()
        except Exception:
            pass
        drop_database(name)
        say(f"database {name} dropped")


def bench_env(url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=url,
        DJANGO_SETTINGS_MODULE="dashboard.settings",
        DEBUG="0",
        SECRET_KEY="bench-" + "x" * 50,
        ALLOWED_HOSTS="127.0.0.1,localhost,testserver",  # testserver: Django's test client
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.pop("REDIS_URL", None)
    env.update(extra)
    return env


def setup_django(url: str) -> None:
    """Point this process's Django at the bench database (call once, before importing models)."""
    os.environ.update(bench_env(url))
    import django

    django.setup()


# --- batches, built like conftest.make_batch (H100-like GPUs, realistic values) ---------------


def _stats(v: float, spread: float = 1.0, hi: float | None = None) -> dict:
    top = v + spread if hi is None else min(hi, v + spread)
    return {"min": max(0.0, v - spread), "mean": v, "max": top}


def make_sample(seq: int, ts: float, gpus: int = 8, cpu: float = 25.0, util: float = 50.0) -> dict:
    return {
        "seq": seq,
        "ts": ts,
        "interval_s": 10.0,
        "count": 10,
        "system": {
            "cpu_percent": _stats(cpu, 5, 100),
            "load1": _stats(1.5, 0.2),
            "mem_used_bytes": _stats(64e9, 1e8),
            "mem_total_bytes": 256 * 2**30,
            "swap_used_bytes": _stats(0, 0),
            "swap_total_bytes": 0,
            "disk_read_bytes_per_s": _stats(1e6, 1e5),
            "disk_write_bytes_per_s": _stats(2e6, 1e5),
            "net_rx_bytes_per_s": _stats(5e5, 1e4),
            "net_tx_bytes_per_s": _stats(4e5, 1e4),
            "mem_wired_bytes": None,
            "mem_compressed_bytes": None,
            "cpu_per_core_percent": [cpu] * 128,
        },
        "gpus": [
            {
                "index": i,
                "uuid": f"GPU-{i:08d}-bench",
                "util_percent": _stats(util, 10, 100),
                "mem_util_percent": _stats(util / 2, 5, 100),
                "mem_used_bytes": _stats(40e9, 1e8),
                "mem_total_bytes": 85520809984,
                "power_watts": _stats(350, 20),
                "power_limit_watts": 700.0,
                "temp_c": _stats(55, 2),
                "sm_clock_mhz": _stats(1980, 0),
                "mem_clock_mhz": _stats(2619, 0),
                "throttle_reasons": 0,
                "ecc_errors": 0,
                "xid_errors": 0,
                "processes": [{"pid": 4242, "name": "python3", "user": "alice", "mem_used_bytes": 40_000_000_000}],
            }
            for i in range(gpus)
        ],
    }


def make_inventory(gpus: int = 8) -> dict:
    return {
        "hostname": "gpu-bench.example",
        "os": "Linux 6.1.0 (Debian GNU/Linux 12)",
        "cpu_model": "AMD EPYC 7763 64-Core Processor",
        "cpu_cores": 64,
        "cpu_threads": 128,
        "mem_total_bytes": 256 * 2**30,
        "accelerators": [
            {
                "index": i,
                "vendor": "nvidia",
                "name": "NVIDIA H100 80GB HBM3",
                "uuid": f"GPU-{i:08d}-bench",
                "mem_total_bytes": 85520809984,
                "power_limit_watts": 700.0,
                "driver": "590.48.01",
            }
            for i in range(gpus)
        ],
    }


def make_batch(seqs, now: float, gpus: int = 8, inventory: bool = False) -> dict:
    """Windows ending 10 s apart, the newest at ``now`` (like conftest.make_batch)."""
    seqs = list(seqs)
    samples = [
        make_sample(s, now - 10 * (len(seqs) - 1 - i), gpus=gpus, util=(s * 7) % 100) for i, s in enumerate(seqs)
    ]
    return {
        "agent_version": "0.1.0",
        "dropped": 0,
        "inventory": make_inventory(gpus) if inventory else None,
        "samples": samples,
    }


# --- statistics -------------------------------------------------------------------------------


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values, p: float) -> float:
    """The ``p``-th percentile (0-100) of ``values`` (dashboard.core.stats' rule); NaN for none."""
    result = stats.percentile(values, p / 100)
    return float("nan") if result is None else result


def timed(fn, repeats: int) -> list[float]:
    """Seconds per call, ``repeats`` times."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])
