"""Tables of observations a device uploads (CSV with a header row, or Parquet): one row each,
read into the sidecar's shape so that every row is validated like a sidecar."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

TABLE_COLUMNS = ("device_id", "device_type", "observed_at", "lat", "lon")


def _number(value: Any) -> Any:
    """CSV cells are text: numbers become floats ('nan'/'inf' too, so ranges refuse them)."""
    if not isinstance(value, str):
        return value
    if value.strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        return value


def read_table(data: bytes, suffix: str) -> list[dict[str, Any]]:
    """Rows of a CSV (UTF-8, header row) or Parquet file as dicts."""
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(data)).to_pylist()
    text = data.decode("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def row_document(row: dict[str, Any]) -> dict[str, Any]:
    """A table row in the sidecar's shape: the known columns, every other column a reading."""
    doc = {k: row.get(k) for k in TABLE_COLUMNS if row.get(k) not in (None, "")}
    for k in ("lat", "lon"):
        if k in doc:
            doc[k] = _number(doc[k])
    if isinstance(doc.get("observed_at"), datetime) and doc["observed_at"].tzinfo is None:
        doc["observed_at"] = doc["observed_at"].replace(tzinfo=UTC)
    doc["readings"] = {k: _number(v) for k, v in row.items()
                       if k not in TABLE_COLUMNS and v not in (None, "")}
    return doc
