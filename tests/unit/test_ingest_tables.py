"""Sensor-only batches (CSV, Parquet), size limits, device registry and bad keys."""

import csv
import io
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select

from core.db import IngestedFile, Observation, Reject
from core.store import filesystem
from oceanml.simulator import simulate, write_landing
from tasks.ingest import ingest

END = datetime(2026, 11, 20, tzinfo=UTC)
HEADER = ["device_id", "device_type", "observed_at", "lat", "lon", "water_temp_c", "ph",
          "wind_knots"]
GOOD_ROWS = [
    ["buoy-001", "buoy", "2026-11-19T10:00:00Z", "43.5", "-3.2", "14.1", "8.1", "12"],
    ["buoy-001", "buoy", "2026-11-19T11:00:00Z", "43.5", "-3.2", "14.3", "8.09", ""],
    ["buoy-002", "buoy", "2026-11-19T11:00:00Z", "43.7", "-3.0", "", "8.12", "9"],
]
BAD_ROWS = [
    ["buoy-001", "buoy", "2026-11-19T12:00:00Z", "43.5", "-3.2", "nan", "8.1", ""],
    ["buoy-001", "buoy", "2026-11-19T13:00:00Z", "43.5", "-3.2", "14.0", "19.5", ""],
    ["", "buoy", "2026-11-19T14:00:00Z", "43.5", "-3.2", "14.0", "8.1", ""],
    ["buoy-001", "buoy", "2026-11-19T15:00:00Z", "north", "-3.2", "14.0", "8.1", ""],
]


def csv_bytes(rows) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerows([HEADER, *rows])
    return buf.getvalue().encode()


def put(settings, key: str, data: bytes) -> None:
    landing = filesystem(settings.landing_url)
    landing.fs.makedirs(landing.path(key).rsplit("/", 1)[0], exist_ok=True)
    landing.fs.pipe_file(landing.path(key), data)


def test_csv_rows_become_observations_and_bad_rows_rejects(settings, sessions) -> None:
    put(settings, "tables/2026-11-19.csv", csv_bytes(GOOD_ROWS + BAD_ROWS))
    result = ingest(settings, sessions, now=END)
    assert result.ingested == 3
    assert dict(result.reasons) == {"out_of_range": 2, "schema": 2}
    with sessions() as s:
        rows = s.scalars(select(Observation).order_by(Observation.id)).all()
        rejects = {r.source_key: r for r in s.scalars(select(Reject))}
        ledger = s.scalar(select(IngestedFile))
    assert [r.image_key for r in rows] == [None, None, None]
    assert rows[0].water_temp_c == 14.1 and rows[0].extra_readings == {"wind_knots": 12.0}
    assert rows[2].water_temp_c is None and rows[0].source_key == "tables/2026-11-19.csv#row=1"
    assert "ph" in rejects["tables/2026-11-19.csv#row=5"].detail
    assert ledger.outcome == "ingested"
    again = ingest(settings, sessions, now=END)
    assert (again.seen, again.already_known) == (0, 1)


def test_parquet_rows_are_read_too_and_resent_rows_are_duplicates(settings, sessions) -> None:
    table = pa.table({
        "device_id": ["cam-7", "cam-7"], "device_type": ["camera", "camera"],
        "observed_at": [datetime(2026, 11, 19, 9, tzinfo=UTC), datetime(2026, 11, 19, 10)],
        "lat": [43.4, 43.4], "lon": [-8.1, -8.1], "turbidity_ntu": [3.5, float("inf")],
    })
    buf = io.BytesIO()
    pq.write_table(table, buf)
    put(settings, "tables/cam.parquet", buf.getvalue())
    first = ingest(settings, sessions, now=END)
    assert (first.ingested, dict(first.reasons)) == (1, {"out_of_range": 1})
    put(settings, "tables/cam-resent.parquet", buf.getvalue())
    second = ingest(settings, sessions, now=END)
    assert second.ingested == 0 and second.reasons["duplicate"] == 1


def test_unreadable_tables_are_one_reject_each(settings, sessions) -> None:
    put(settings, "tables/broken.parquet", b"PAR1 this is not parquet")
    put(settings, "tables/latin1.csv", "device_id\nbou\xe9e-1\n".encode("latin-1"))
    result = ingest(settings, sessions, now=END)
    assert dict(result.reasons) == {"table_unreadable": 1, "table_not_utf8": 1}


def test_oversized_files_are_refused_before_reading(settings, sessions) -> None:
    settings.max_image_bytes = 1000
    write_landing(filesystem(settings.landing_url),
                  simulate(days=1, devices=1, per_day=3, end=END), faults=False)
    result = ingest(settings, sessions, now=END)
    assert dict(result.reasons) == {"image_too_large": 3}


def test_unknown_devices_are_refused_when_a_registry_is_configured(settings, sessions, tmp_path):
    registry = tmp_path / "devices.csv"
    registry.write_text("device_id,owner\nbuoy-000,ifremer\n")
    settings.device_registry_url = str(registry)
    write_landing(filesystem(settings.landing_url),
                  simulate(days=1, devices=3, per_day=2, end=END), faults=False)
    result = ingest(settings, sessions, now=END)
    assert result.ingested == 2 and dict(result.reasons) == {"unknown_device": 4}


def test_keys_with_control_characters_are_refused(settings, sessions) -> None:
    obs = next(simulate(days=1, devices=1, per_day=1, end=END))
    put(settings, "odd/bell\x07name.jpg", obs.image)
    put(settings, "odd/bell\x07name.json", b"{}")
    result = ingest(settings, sessions, now=END)
    assert dict(result.reasons) == {"bad_key": 1}
