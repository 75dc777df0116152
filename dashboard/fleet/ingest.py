"""Storing a validated batch: idempotent by (machine, seq), all or nothing.

On PostgreSQL a batch is first COPYed straight into the sample tables: nearly every batch is new,
and that is the cheapest write (two binary COPYs and one upsert of the machine's state, no statement per row). A batch
holding a window stored before (a replay after a lost reply) fails that COPY on the unique index;
it is rolled back and written again with one ``INSERT ... ON CONFLICT DO NOTHING RETURNING seq``
per table, fed by COPY into a temp table, which skips stored windows and tells which were new.
SQLite gets the same INSERT with a multi-row VALUES. Neither builds a model instance per row
(most of bulk_create's time goes there); bench/README.md has the figures."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone
from psycopg.errors import UniqueViolation

from hwprobe.schema import GPU_METRICS, SYSTEM_METRICS, Metric

from . import state
from .models import (
    Accelerator,
    GpuSample,
    Machine,
    MachineState,
    SystemSample,
    ThroughputRollup,
    ThroughputSample,
    metric_columns,
)
from .payload import MAX_BIGINT, Batch, Inventory, PayloadError, Sample
from .throughput import KINDS

# Keep each statement's parameters under SQLite's 32,766 limit.
MAX_PARAMS = 30_000


class SeqExhausted(PayloadError):
    """This machine's stored numbering has no room for the batch: a 409 that says what to do."""


@dataclass
class IngestResult:
    accepted: int
    duplicates: int
    last_seq: int

    def as_dict(self) -> dict[str, int]:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "last_seq": self.last_seq}


_COLUMN_TYPES: dict[tuple[str, tuple[str, ...]], list[str]] = {}


def column_types(table: str, columns: Sequence[str]) -> list[str]:
    """The PostgreSQL types of ``columns``, from the catalogue once per process: binary COPY
    needs them, and a value sent as another type (int8 for an int4 column) would be refused."""
    key = (table, tuple(columns))
    if key not in _COLUMN_TYPES:
        with connection.cursor() as cursor:
            cursor.execute(
                # The type without its modifier ("character varying", not "...(16)"): psycopg's names.
                "SELECT attname, atttypid::regtype::text FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                [table],
            )
            types = dict(cursor.fetchall())
        _COLUMN_TYPES[key] = [types[c] for c in columns]
    return _COLUMN_TYPES[key]


def _copy_rows(cursor: Any, table: str, target: str, columns: Sequence[str], rows: list[list[Any]]) -> None:
    """COPY ``rows`` into ``target`` (``table`` or a temp table shaped like it) in binary.

    Binary, not text: PostgreSQL then reads each float as 8 bytes instead of parsing its decimal
    text (85 columns per GPU row), and psycopg packs them in C. A 10-window batch's two COPYs took
    ~1.4-2x less time (bench/README.md, issue 13)."""
    qn = connection.ops.quote_name
    cols = ", ".join(qn(c) for c in columns)
    types = column_types(table, columns)  # before the COPY: the connection is busy during it
    with cursor.copy(f"COPY {target} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


def _copy(model, columns: Sequence[str], rows: list[list[Any]]) -> None:
    """PostgreSQL: COPY rows straight into the table; a row already stored raises UniqueViolation."""
    if not rows:
        return
    table = model._meta.db_table
    with connection.cursor() as cursor:
        _copy_rows(cursor, table, connection.ops.quote_name(table), columns, rows)


def _insert_pg_copy(model, columns: Sequence[str], rows: list[list[Any]], conflict: Sequence[str]) -> set[int]:
    """PostgreSQL: COPY the rows into a temp table, then one INSERT ... SELECT ... ON CONFLICT.

    A multi-row VALUES statement has thousands of placeholders that psycopg splits and quotes
    client-side; that was most of the insert's time (bench/README.md). COPY sends rows packed in binary.
    """
    qn = connection.ops.quote_name
    table = model._meta.db_table
    cols = ", ".join(qn(c) for c in columns)
    # One temp table per session and column list (a migration that adds a column gets a new one).
    # ON COMMIT DELETE ROWS empties it at each commit; the DELETE covers a caller's outer transaction.
    temp = qn(f"_ingest_{table}_{zlib.crc32(cols.encode()):08x}")
    with connection.cursor() as cursor:
        cursor.execute(  # two statements, one round trip (no parameters: simple query protocol)
            f"CREATE TEMP TABLE IF NOT EXISTS {temp} ON COMMIT DELETE ROWS AS "
            f"SELECT {cols} FROM {qn(table)} WITH NO DATA; DELETE FROM {temp}"
        )
        _copy_rows(cursor, table, temp, columns, rows)
        cursor.execute(
            f"INSERT INTO {qn(table)} ({cols}) SELECT {cols} FROM {temp} "
            f"ON CONFLICT ({', '.join(qn(c) for c in conflict)}) DO NOTHING RETURNING {qn('seq')}"
        )
        return {r[0] for r in cursor.fetchall()}


def _insert_returning_seq(model, columns: Sequence[str], rows: list[list[Any]], conflict: Sequence[str]) -> set[int]:
    """Insert rows, skipping ones that already exist; return the seqs actually inserted."""
    if not rows:
        return set()
    if connection.vendor == "postgresql":
        return _insert_pg_copy(model, columns, rows, conflict)
    qn = connection.ops.quote_name
    table = qn(model._meta.db_table)
    cols = ", ".join(qn(c) for c in columns)
    one = "(" + ", ".join(["%s"] * len(columns)) + ")"
    per_statement = max(1, MAX_PARAMS // len(columns))
    inserted: set[int] = set()
    with connection.cursor() as cursor:
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            sql = (
                f"INSERT INTO {table} ({cols}) VALUES {', '.join([one] * len(chunk))} "
                f"ON CONFLICT ({', '.join(qn(c) for c in conflict)}) DO NOTHING RETURNING {qn('seq')}"
            )
            cursor.execute(sql, [v for row in chunk for v in row])
            inserted.update(r[0] for r in cursor.fetchall())
    return inserted


def _ts(sample: Sample) -> datetime:
    return datetime.fromtimestamp(sample.ts, tz=UTC)


THROUGHPUT_INSERT = [
    "machine_id",
    "seq",
    "job_key",
    "source",
    "ts",
    "interval_s",
    "prompt_tokens",
    "generated_tokens",
    "train_tokens",
    "active_s",
    "points",
    "received_at",
]
POINTS = ThroughputSample._meta.get_field("points")


def _store_tokens(machine: Machine, samples: list[tuple[Sample, int]], now: datetime, all_new: bool) -> None:
    """Token counts of new windows, with the job id the agent reported (checked when read).

    Written like the samples (COPY when the batch is all new, else the insert that skips stored
    rows), not with a model instance per row: with two sources a window, ``bulk_create`` was half
    of a 10-window batch's ``store_batch`` (bench/README.md, "Token rollups")."""
    adapt = connection.ops.adapt_datetimefield_value
    received = adapt(now)
    rows = [
        [
            machine.pk,
            seq,
            t.job_id or 0,
            t.source,
            adapt(_ts(s)),
            s.interval_s,
            t.prompt,
            t.generated,
            t.train,
            t.active_s,
            POINTS.get_db_prep_value(t.points, connection),  # JSON as each database binds it
            received,
        ]
        for s, seq in samples
        for t in s.tokens
    ]
    if all_new and connection.vendor == "postgresql":
        _copy(ThroughputSample, THROUGHPUT_INSERT, rows)
    else:
        _insert_returning_seq(
            ThroughputSample, THROUGHPUT_INSERT, rows, ("machine_id", "seq", "job_key", "source", "ts")
        )
    _add_token_rollups(machine.pk, samples)


def _add_token_rollups(machine_id: int, samples: list[tuple[Sample, int]]) -> None:
    """Add new windows' tokens to their minute and hour ``ThroughputRollup`` rows: per window and
    job each kind's largest count among its sources (``throughput.window_tokens``' rule; a window's
    sources all arrive in its sample). Called only with windows stored now, in their transaction,
    so adding is exact. A sum saturates at the column's limit instead of failing the batch."""
    sums: dict[tuple[int, int, int], list[int]] = {}
    for sample, _seq in samples:
        best: dict[int, list[int]] = {}
        for t in sample.tokens:
            counts = best.setdefault(t.job_id or 0, [0, 0, 0])
            for i, n in enumerate(getattr(t, kind) for kind in KINDS):
                counts[i] = max(counts[i], n)
        epoch = int(_ts(sample).timestamp())  # as the stored stamp, to the microsecond
        for job_key, counts in best.items():
            if not any(counts):
                continue  # entries that counted nothing add nothing (and make no row)
            for resolution in ThroughputRollup.RESOLUTIONS:
                total = sums.setdefault((resolution, epoch - epoch % resolution, job_key), [0, 0, 0])
                for i, n in enumerate(counts):
                    total[i] += n
    if not sums:
        return
    adapt = connection.ops.adapt_datetimefield_value
    rows = [
        [
            machine_id,
            job_key,
            resolution,
            adapt(datetime.fromtimestamp(start, tz=UTC)),
            *(min(n, MAX_BIGINT) for n in total),
        ]
        for (resolution, start, job_key), total in sorted(sums.items())  # one lock order for every batch
    ]
    qn = connection.ops.quote_name
    table = qn(ThroughputRollup._meta.db_table)
    kinds = tuple(KINDS.values())  # the columns, in the order the sums were added in
    add = ", ".join(
        f"{c} = CASE WHEN {table}.{c} > {MAX_BIGINT} - excluded.{c} "
        f"THEN {MAX_BIGINT} ELSE {table}.{c} + excluded.{c} END"
        for c in kinds
    )
    per_statement = MAX_PARAMS // 7
    with connection.cursor() as cursor:
        for first in range(0, len(rows), per_statement):
            chunk = rows[first : first + per_statement]
            cursor.execute(
                f"INSERT INTO {table} (machine_id, job_key, resolution_s, bucket, {', '.join(kinds)}) VALUES "
                + ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(chunk))
                + f" ON CONFLICT (machine_id, resolution_s, bucket, job_key) DO UPDATE SET {add}",
                [v for row in chunk for v in row],
            )


def _latest(sample: Sample, seq: int) -> dict[str, Any]:
    """The newest sample in the compact form the fleet page and the process table read."""

    def summary(payload: Any, metrics: Iterable[Metric]) -> dict[str, Any]:
        out = {}
        for metric in metrics:
            value = getattr(payload, metric.name)
            out[metric.name] = value["mean"] if metric.kind == "gauge" and value is not None else value
        return out

    system = summary(sample.system, SYSTEM_METRICS)
    system["cpu_per_core_percent"] = sample.system.cpu_per_core_percent
    gpus = []
    for gpu in sorted(sample.gpus, key=lambda g: g.index):
        entry = {"index": gpu.index, "uuid": gpu.uuid, **summary(gpu, GPU_METRICS)}
        entry["processes"] = [p.model_dump() for p in gpu.processes or []]
        gpus.append(entry)
    return {"seq": seq, "ts": sample.ts, "system": system, "gpus": gpus, "report_udp": sample.report_udp}


def _apply_inventory(machine: Machine, inventory: Inventory) -> dict[str, Any]:
    """Store the accelerators; return the machine's inventory fields for the caller's UPDATE."""
    seen = []
    for acc in inventory.accelerators:
        seen.append(acc.index)
        Accelerator.objects.update_or_create(
            machine=machine,
            index=acc.index,
            defaults={
                "vendor": acc.vendor or "unknown",
                "name": acc.name or "",
                "uuid": acc.uuid or "",
                "mem_total_bytes": acc.mem_total_bytes,
                "power_limit_watts": acc.power_limit_watts,
                "parent_uuid": acc.parent_uuid or "",
                "mig_profile": acc.mig_profile or "",
                "gpu_instance_id": acc.gpu_instance_id,
                "compute_instance_id": acc.compute_instance_id,
                "gpm_supported": acc.gpm_supported,
                "driver": acc.driver or "",
            },
        )
    Accelerator.objects.filter(machine=machine).exclude(index__in=seen).delete()
    fields: dict[str, Any] = {
        "hostname": inventory.hostname or "",
        "os": inventory.os or "",
        "cpu_model": inventory.cpu_model or "",
        "cpu_cores": inventory.cpu_cores,
        "cpu_threads": inventory.cpu_threads,
        "mem_total_bytes": inventory.mem_total_bytes,
    }
    # The agent measures the drive once, in the background, after it starts: an inventory sent
    # before that (or by an agent told not to measure) keeps the figure the machine already has.
    if inventory.storage_read_bytes_per_s is not None:
        fields["storage_read_bytes_per_s"] = inventory.storage_read_bytes_per_s
    return fields


SYSTEM_INSERT = ["machine_id", "seq", "ts", "interval_s", "count", "received_at"] + [
    c for m in SYSTEM_METRICS for c in metric_columns(m)
]
GPU_INSERT = ["machine_id", "seq", "gpu_index", "ts", "interval_s", "count", "received_at"] + [
    c for m in GPU_METRICS for c in metric_columns(m)
]


def store_batch(machine: Machine, batch: Batch, now: datetime | None = None) -> IngestResult:
    """Store what is new in ``batch`` for ``machine``; samples already stored are skipped."""
    now = now or timezone.now()
    if connection.vendor == "postgresql":
        # Nearly every batch is new: COPY it straight into the tables. A window stored before (a
        # replay) makes the COPY fail on the unique index; the transaction is then rolled back and
        # the batch goes through the path that skips stored windows.
        known = (machine.spool_id, machine.seq_offset, machine.last_seq)
        try:
            with transaction.atomic():
                return _store(machine, batch, now, all_new=True)
        except UniqueViolation:
            machine.spool_id, machine.seq_offset, machine.last_seq = known
    with transaction.atomic():
        return _store(machine, batch, now, all_new=False)


def _store(machine: Machine, batch: Batch, now: datetime, all_new: bool) -> IngestResult:
    adapt = connection.ops.adapt_datetimefield_value
    received = adapt(now)
    offset = _seq_offset(machine, batch)
    samples = batch.samples
    laid_out = batch.laid_out()  # each sample's metrics in column order, checked by parse_batch
    if offset + max(s.seq for s in samples) > MAX_BIGINT:  # refused before any row is written
        raise SeqExhausted(
            f"seq: this machine's windows are numbered up to {machine.last_seq}, and this spool's would pass "
            "the database's limit of 2**63-1; enroll the machine anew under another name"
        )
    seqs = [s.seq + offset for s in samples]  # from the agent's numbering to this machine's
    if all_new and min(seqs) <= machine.last_seq:
        all_new = False  # some may be stored: the path that skips them
    if not all_new:
        # (machine, seq) names a window. The unique keys also hold ts (the partition key on
        # PostgreSQL), so a window already stored is found by its seq before the insert; the
        # ON CONFLICT below still covers a replay racing this batch.
        stored = set(SystemSample.objects.filter(machine_id=machine.pk, seq__in=seqs).values_list("seq", flat=True))
        keep = [seq not in stored for seq in seqs]
        samples = [s for s, new_one in zip(samples, keep, strict=True) if new_one]
        laid_out = [v for v, new_one in zip(laid_out, keep, strict=True) if new_one]
        if not samples:  # all replayed: the machine was still seen now
            _update_machine(machine, batch, now, max(seqs), 0, None)
            return IngestResult(0, len(batch.samples), max(max(seqs), machine.last_seq) - offset)
        seqs = [s.seq + offset for s in samples]
    times = [adapt(_ts(s)) for s in samples]
    system_rows = [
        [machine.pk, seq, ts, s.interval_s, s.count, received, *system]
        for s, seq, ts, (system, _) in zip(samples, seqs, times, laid_out, strict=True)
    ]
    if all_new:
        _copy(SystemSample, SYSTEM_INSERT, system_rows)
        new = set(seqs)
    else:
        new = _insert_returning_seq(SystemSample, SYSTEM_INSERT, system_rows, ("machine_id", "seq", "ts"))

    gpu_rows = [
        [machine.pk, seq, g.index, ts, s.interval_s, s.count, received, *values]
        for s, seq, ts, (_, gpus) in zip(samples, seqs, times, laid_out, strict=True)
        if seq in new
        for g, values in zip(s.gpus, gpus, strict=True)
    ]
    if all_new:
        _copy(GpuSample, GPU_INSERT, gpu_rows)
    else:
        _insert_returning_seq(GpuSample, GPU_INSERT, gpu_rows, ("machine_id", "seq", "gpu_index", "ts"))
    _store_tokens(machine, [(s, seq) for s, seq in zip(samples, seqs, strict=False) if seq in new], now, all_new)

    newest_seq, newest = max(zip(seqs, samples, strict=False), key=lambda pair: pair[0])
    tokens_dropped = sum(s.tokens_dropped for s, seq in zip(samples, seqs, strict=True) if seq in new)
    fresh = newest_seq in new and newest_seq >= machine.last_seq
    # tokens_dropped counts new windows only: a replayed window is not counted twice.
    _update_machine(machine, batch, now, newest_seq, tokens_dropped, _latest(newest, newest_seq) if fresh else None)

    return IngestResult(
        accepted=len(new),
        duplicates=len(batch.samples) - len(new),
        last_seq=max(newest_seq, machine.last_seq) - offset,
    )


def _update_machine(
    machine: Machine, batch: Batch, now: datetime, newest_seq: int, tokens_dropped: int, latest: dict | None
) -> None:
    """The machine row (which placement and pages read) changes only with its inventory or
    version; what every batch changes is one upsert of its MachineState."""
    updates: dict[str, Any] = _apply_inventory(machine, batch.inventory) if batch.inventory is not None else {}
    if batch.agent_version and batch.agent_version != machine.agent_version:
        updates["agent_version"] = batch.agent_version
    if updates:
        Machine.objects.filter(pk=machine.pk).update(**updates)
        for field, value in updates.items():  # a caller that stores several batches sees the row as stored
            setattr(machine, field, value)
    state.record(machine.pk, now, newest_seq, batch.dropped, batch.refused, tokens_dropped, latest)


def _seq_offset(machine: Machine, batch: Batch) -> int:
    """What to add to this batch's seqs: non-zero once a machine's agent restarted its numbering."""
    if not batch.spool_id or batch.spool_id == machine.spool_id:
        return machine.seq_offset
    # A spool we have not seen (a reinstalled agent, a wiped state folder): if its seqs overlap
    # what is stored, they are a new series, not replays, and go after it.
    MachineState.objects.get_or_create(machine_id=machine.pk)
    locked = MachineState.objects.select_for_update().get(pk=machine.pk)
    if batch.spool_id == locked.spool_id:
        offset = locked.seq_offset
    else:
        first = min(s.seq for s in batch.samples)
        offset = locked.last_seq if first <= locked.last_seq else 0
        # The agent's drop and refusal counts are its spool's: a new spool counts from 0 again, and
        # kept at the old spool's (GREATEST) its first losses would not show until they passed them.
        MachineState.objects.filter(pk=machine.pk).update(
            spool_id=batch.spool_id, seq_offset=offset, spool_dropped=0, spool_refused=0
        )
    machine.spool_id, machine.seq_offset, machine.last_seq = batch.spool_id, offset, locked.last_seq
    return offset
