"""A CSV download: the one response every "Download CSV" link answers with."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any

from django.http import HttpResponse


def csv_response(rows: Iterable[Iterable[Any]], filename: str) -> HttpResponse:
    """``rows`` (the header first) as an attachment named ``filename``; None cells are written
    empty (csv.writer's own rule)."""
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    csv.writer(response).writerows(rows)
    return response
