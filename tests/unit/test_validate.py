import io
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from PIL import Image

from core.db import SENSOR_COLUMNS
from tasks.validate import Readings, Rejection, inspect_image, observation_row, parse_sidecar

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
GOOD = {
    "device_id": "buoy-001", "device_type": "buoy", "observed_at": "2026-11-20T10:00:00Z",
    "lat": 43.5, "lon": -3.2,
    "readings": {"water_temp_c": 14.2, "ph": 8.1, "turbidity_ntu": 2.0, "wind_knots": 12},
}


def jpeg(size=(32, 32), colour=(20, 80, 130)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def reason(raw: bytes) -> str:
    with pytest.raises(Rejection) as err:
        parse_sidecar(raw, now=NOW)
    return err.value.reason


def test_a_good_sidecar_keeps_known_and_extra_readings() -> None:
    row = observation_row(parse_sidecar(json.dumps(GOOD).encode(), now=NOW))
    assert row["water_temp_c"] == 14.2 and row["salinity_psu"] is None
    assert row["extra_readings"] == {"wind_knots": 12}
    assert row["observed_at"] == datetime(2026, 11, 20, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\xff\xfe not utf8", "sidecar_not_utf8"),
        (b"{device_id: x", "sidecar_not_json"),
        (b"[1, 2]", "schema"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "lat"}).encode(), "schema"),
        (json.dumps({**GOOD, "device_id": "../../etc"}).encode(), "schema"),
        (json.dumps({**GOOD, "observed_at": "2026-11-20T10:00:00"}).encode(), "schema"),
        (json.dumps({**GOOD, "lat": 91}).encode(), "out_of_range"),
        (json.dumps({**GOOD, "readings": {"ph": 19.5}}).encode(), "out_of_range"),
        (b'{"device_id": "b", "observed_at": "2026-11-20T10:00:00Z", "lat": NaN, "lon": 0}',
         "out_of_range"),
        (json.dumps({**GOOD, "observed_at": (NOW + timedelta(hours=2)).isoformat()}).encode(),
         "timestamp_future"),
    ],
)
def test_bad_sidecars_are_refused_with_a_reason(raw: bytes, expected: str) -> None:
    assert reason(raw) == expected


def test_out_of_range_detail_names_field_and_value() -> None:
    with pytest.raises(Rejection) as err:
        parse_sidecar(json.dumps({**GOOD, "readings": {"ph": 19.5}}).encode(), now=NOW)
    assert "readings.ph" in err.value.detail and "19.5" in err.value.detail


def test_a_good_image_gives_size_and_colour_stats() -> None:
    info = inspect_image(jpeg(), max_bytes=10**6, max_pixels=10**6)
    assert (info.width, info.height) == (32, 32)
    assert info.stats["blue"] > info.stats["green"] > info.stats["red"]


@pytest.mark.parametrize(
    ("data", "limits", "expected"),
    [
        (jpeg()[:200], {}, "image_truncated"),
        (b"GIF89a-not-really", {}, "image_undecodable"),
        (b"\x00" * 100, {}, "image_undecodable"),
        (jpeg(), {"max_bytes": 100}, "image_too_large"),
        (jpeg((200, 200)), {"max_pixels": 100 * 100}, "decompression_bomb"),
    ],
)
def test_bad_images_are_refused_with_a_reason(data: bytes, limits: dict, expected: str) -> None:
    with pytest.raises(Rejection) as err:
        inspect_image(data, **{"max_bytes": 10**6, "max_pixels": 10**6, **limits})
    assert err.value.reason == expected


def test_time_and_device_limits() -> None:
    from tasks.validate import Limits, check_observation

    limits = Limits(now=NOW, devices=frozenset({"buoy-001"}))
    doc = json.loads(json.dumps(GOOD))
    assert check_observation(doc, limits).device_id == "buoy-001"
    for changes, expected in (({"observed_at": "1970-01-01T00:00:00Z"}, "timestamp_too_old"),
                              ({"device_id": "buoy-999"}, "unknown_device")):
        with pytest.raises(Rejection) as err:
            check_observation({**doc, **changes}, limits)
        assert err.value.reason == expected


@pytest.mark.parametrize("key", ["../etc/passwd.jpg", "a/../../b.json", "/abs/x.jpg",
                                 "a\\..\\b.jpg", "bell\x07.jpg", "new\nline.json"])
def test_keys_with_traversal_or_control_characters_are_refused(key: str) -> None:
    from tasks.validate import check_key

    with pytest.raises(Rejection) as err:
        check_key(key)
    assert err.value.reason == "bad_key"


def test_ordinary_keys_pass() -> None:
    from tasks.validate import check_key

    check_key("2026-11-20/buoy-001/buoy-001-20261120T100000-n0-001.jpg")


def test_the_readings_model_knows_exactly_the_sensor_columns() -> None:
    """observation_row splits readings into columns by the model's fields, not the DB's."""
    assert tuple(Readings.model_fields) == SENSOR_COLUMNS


def test_colour_stats_follow_their_definitions_on_known_pixels() -> None:
    """Lossless pixels at the statistics' own size, against the definitions written plainly."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    stats = inspect_image(buf.getvalue(), max_bytes=10**6, max_pixels=10**6).stats
    arr = pixels.astype(np.float64) / 255
    r, g, b = arr.reshape(-1, 3).mean(axis=0)
    expected = {"brightness": arr.mean(axis=2).mean(), "contrast": arr.mean(axis=2).std(),
                "red": r, "green": g, "blue": b, "green_ratio": g / (r + g + b),
                "saturation": (arr.max(axis=2) - arr.min(axis=2)).mean()}
    assert stats == pytest.approx(expected, abs=2e-4)
