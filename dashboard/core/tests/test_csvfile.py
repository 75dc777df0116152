"""The CSV download every "Download CSV" link answers with."""

from __future__ import annotations

import csv
import io

from dashboard.core.csvfile import csv_response


def test_rows_become_an_attachment_with_empty_cells_for_none():
    rows = (row for row in [["name", "tokens"], ["gpu-01", 12], ["gpu-02", None], ['a, "quoted" name', 3]])
    response = csv_response(rows, "fleet-2026-12-01.csv")
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="fleet-2026-12-01.csv"'
    assert response.content.decode().splitlines()[2] == "gpu-02,"
    assert list(csv.reader(io.StringIO(response.content.decode()))) == [
        ["name", "tokens"],
        ["gpu-01", "12"],
        ["gpu-02", ""],
        ['a, "quoted" name', "3"],
    ]
