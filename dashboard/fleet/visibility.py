"""Which machines a user may see: their teams' and the shared pool's (``dashboard.teams.access``).

Every page and API call that shows a machine, or figures of one, asks here, so a machine of
another team reads as one that does not exist. Views turn the user into ``visible_machine_ids``
and hand that to the functions that compute fleet-wide figures, which take ``machine_ids``
(None: every machine) rather than a user, so they stay plain and testable.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from django.db import connections
from django.db.models import BooleanField, QuerySet
from django.db.models.expressions import RawSQL
from django.shortcuts import get_object_or_404

from dashboard.teams import access as team_access

from .models import Machine


def visible_machines(user: Any, qs: QuerySet[Machine] | None = None) -> QuerySet[Machine]:
    """``qs`` (default: every machine) narrowed to those ``user`` may see."""
    return team_access.scope_machines(Machine.objects.all() if qs is None else qs, user)


def visible_machine_ids(user: Any) -> set[int] | None:
    """Ids of the machines ``user`` may see; None when they see every machine (no query then)."""
    if team_access.visible_team_ids(user) is None:
        return None
    return set(visible_machines(user).values_list("pk", flat=True))


def machine_or_404(user: Any, name: str, qs: QuerySet[Machine] | None = None) -> Machine:
    """The machine ``name`` if ``user`` may see it; Http404 otherwise, as for a name nobody uses."""
    return get_object_or_404(visible_machines(user, qs), name=name)


def only(qs: QuerySet, machine_ids: Collection[int] | None, field: str = "machine_id") -> QuerySet:
    """``qs`` limited to rows of ``machine_ids`` (through ``field``); unchanged for None (all)."""
    if machine_ids is None:
        return qs
    ids = sorted(machine_ids)
    connection = connections[qs.db]
    if connection.vendor == "postgresql" and len(ids) > 20:
        # One array parameter, not a placeholder per machine: psycopg fills a query's placeholders
        # client-side, and with 750 ids that took ~10 ms per query, several per page
        # (bench/README.md, "The fleet page for a team member"). ``= ANY`` of a bigint[], the
        # columns' type: PostgreSQL hashes the array once, where ``IN (SELECT unnest(...))`` is a
        # join and an int[] is searched row by row (an hour of 1,000 machines' GPU rollups: 76 ms,
        # against 178-300 and 365 ms; bench/README.md, "Fleet-wide reads of the rollups").
        meta = qs.model._meta
        column = meta.pk.column if field == "pk" else meta.get_field(field).column
        qn = connection.ops.quote_name
        where = f"{qn(meta.db_table)}.{qn(column)} = ANY(%s::bigint[])"
        return qs.filter(RawSQL(where, [ids], output_field=BooleanField()))
    return qs.filter(**{f"{field}__in": ids})
