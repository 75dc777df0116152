"""A machine's hot state (MachineState): what every ingest batch changes, written as one upsert.

Kept apart from the Machine row so that placement's and the pages' reads and locks on machines
never meet ingest's writes (bench/README.md, "Hot state", has the measurements).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connection

from .models import MachineState, gpu_summary

LATEST = MachineState._meta.get_field("latest")


def record(
    machine_id: int,
    seen_at: datetime,
    newest_seq: int,
    dropped: int,
    refused: int,
    tokens_dropped: int,
    latest: dict[str, Any] | None,
) -> None:
    """After a batch: seen now, the highest seq, the spool's drop and refusal counts, and ``latest`` if newer.

    One ``INSERT ... ON CONFLICT DO UPDATE`` (PostgreSQL and SQLite): monotonic columns only grow,
    so two batches of one machine committing out of order leave the newer figures.
    """
    table = connection.ops.quote_name(MachineState._meta.db_table)
    summary = gpu_summary(latest)
    params: dict[str, Any] = {
        "id": machine_id,
        "seen": connection.ops.adapt_datetimefield_value(seen_at),
        "seq": newest_seq,
        "dropped": dropped,
        "refused": refused,
        "tokens": tokens_dropped,
        "latest": None if latest is None else LATEST.get_db_prep_value(latest, connection),
        **summary,
    }
    # ``latest`` and its summary change only when this batch holds the newest window.
    newer = f"excluded.latest IS NOT NULL AND excluded.last_seq >= {table}.last_seq"
    take = ", ".join(
        f"{c} = CASE WHEN {newer} THEN excluded.{c} ELSE {table}.{c} END"
        for c in ("latest", "gpu_count", "gpu_util_percent", "gpu_mem_used_bytes", "gpu_mem_total_bytes")
    )
    # SQLite's two-argument MAX is its GREATEST, except that MAX(NULL, x) is NULL: hence the COALESCE.
    greatest = "GREATEST" if connection.vendor == "postgresql" else "MAX"
    sql = (
        f"INSERT INTO {table} (machine_id, last_seen_at, last_seq, spool_id, seq_offset, spool_dropped, "
        "spool_refused, last_refusal, tokens_dropped, latest, gpu_count, gpu_util_percent, "
        "gpu_mem_used_bytes, gpu_mem_total_bytes) "
        "VALUES (%(id)s, %(seen)s, %(seq)s, '', 0, %(dropped)s, %(refused)s, '', %(tokens)s, %(latest)s, "
        "%(gpu_count)s, %(gpu_util_percent)s, %(gpu_mem_used_bytes)s, %(gpu_mem_total_bytes)s) "
        f"ON CONFLICT (machine_id) DO UPDATE SET {take}, "
        f"last_seen_at = {greatest}(COALESCE({table}.last_seen_at, excluded.last_seen_at), excluded.last_seen_at), "
        f"last_seq = {greatest}({table}.last_seq, excluded.last_seq), "
        f"spool_dropped = {greatest}({table}.spool_dropped, excluded.spool_dropped), "
        f"spool_refused = {greatest}({table}.spool_refused, excluded.spool_refused), "
        f"tokens_dropped = {table}.tokens_dropped + excluded.tokens_dropped"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def record_refusal(machine_id: int, at: datetime, message: str) -> None:
    """A batch of this machine's was refused (400 or 409): keep when and why for its page.

    Written on its own, after the refused batch's transaction is gone; a machine that never
    stored a batch gets its state row here. The message is the one the agent got, cut to fit."""
    MachineState.objects.update_or_create(
        machine_id=machine_id, defaults={"last_refusal_at": at, "last_refusal": message[:500]}
    )
