"""Daily partitions of the raw telemetry tables on PostgreSQL; SQLite keeps plain tables.

``fleet_systemsample``, ``fleet_gpusample`` and ``fleet_throughputsample`` are partitioned by
range of ``ts`` (a window's end stamp), one partition per UTC day (``<table>_pYYYYMMDD``), plus a
default partition for windows outside every day (a spool replayed from before the oldest day).
``ensure()`` creates today's and the next ``DAYS_AHEAD`` days' partitions (migration 0012 and an
hourly beat task call it; ingest refuses windows more than INGEST_MAX_FUTURE_S ahead, so the
default partition never holds a day that is created later). Retention drops whole days with
``drop_before()``: no row-by-row DELETE, no dead tuples, no vacuum debt.

A plain maintenance task rather than the pg_partman extension: the official postgres image (the
compose file's) does not ship pg_partman, and creating a day ahead is a few lines of SQL.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from django.db import connection

TABLES = ("fleet_systemsample", "fleet_gpusample", "fleet_throughputsample")
DAYS_AHEAD = 7


def enabled() -> bool:
    """Whether the raw tables are partitioned here (PostgreSQL after migration fleet 0012)."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
            "WHERE c.relname = %s AND pg_table_is_visible(c.oid)",
            [TABLES[0]],
        )
        return cursor.fetchone()[0] == 1


def _name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def days(table: str) -> dict[date, str]:
    """The day partitions of ``table`` that exist: {day: partition name}."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s",
            [table],
        )
        names = [r[0] for r in cursor.fetchall()]
    prefix = f"{table}_p"
    return {datetime.strptime(n[len(prefix) :], "%Y%m%d").date(): n for n in names if n.startswith(prefix)}


def create_day(table: str, day: date, parent: str | None = None) -> None:
    """The partition of ``table`` for ``day`` (attached to ``parent`` if the table is being built)."""
    qn = connection.ops.quote_name
    lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {qn(_name(table, day))} PARTITION OF {qn(parent or table)} "
            "FOR VALUES FROM (%s) TO (%s)",
            [lo, lo + timedelta(days=1)],
        )


def ensure(now: datetime | None = None, since: date | None = None) -> int:
    """Create the missing day partitions from ``since`` (default: today) to DAYS_AHEAD days ahead."""
    if not enabled():
        return 0
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    created = 0
    for table in TABLES:
        have = days(table)
        day = since or today
        while day <= today + timedelta(days=DAYS_AHEAD):
            if day not in have:
                create_day(table, day)
                created += 1
            day += timedelta(days=1)
    return created


def drop_before(table: str, cutoff: datetime) -> int:
    """Drop the day partitions of ``table`` that end at or before ``cutoff``; return how many."""
    qn = connection.ops.quote_name
    dropped = 0
    for day, name in sorted(days(table).items()):
        if datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1) > cutoff:
            break
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE {qn(name)}")
        dropped += 1
    return dropped
