"""A seeded simulator of the ocean-monitoring network.

It writes what devices would drop into the landing prefix: a JPEG per observation whose content
follows its labels (floating debris, algae, turbidity, waves, glare, noise) and a JSON sidecar
with device, time, place and sensor readings that are physically plausible and correlated with
the scene. Scenarios shift the distributions (``storm``: turbid dark water, high waves;
``bloom``: green water, high chlorophyll) so that drift is real. The same arguments give the
same files, so re-running it changes nothing.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np

from core.labels import (
    ALGAE_LEVELS,
    DEBRIS_LEVELS,
    DEBRIS_TYPES,
    DEVICE_TYPES,
    POLLUTION_LEVELS,
    water_quality_indices,
)
from core.store import Location
from oceanml.scene import SCENARIOS, ScenarioParams, render_image

Scenario = Literal["normal", "storm", "bloom"]


CHLOROPHYLL_BY_ALGAE = (1.0, 4.0, 12.0, 35.0)  # µg/L medians per algae level


@dataclass
class Device:
    device_id: str
    device_type: str
    lat: float
    lon: float


@dataclass
class SimulatedObservation:
    """One observation before it is written: the scene, its readings and labels."""

    stem: str
    device: Device
    observed_at: datetime
    lat: float
    lon: float
    readings: dict[str, float]
    labels: dict[str, object]
    annotated: bool
    image: bytes = field(repr=False)

    def sidecar(self) -> dict:
        doc = {
            "observation_id": self.stem,
            "device_id": self.device.device_id,
            "device_type": self.device.device_type,
            "observed_at": self.observed_at.isoformat().replace("+00:00", "Z"),
            "lat": round(self.lat, 5),
            "lon": round(self.lon, 5),
            "readings": self.readings,
            "firmware": "sim-1.4",
        }
        if self.annotated:
            doc["labels"] = self.labels
        return doc


def make_devices(n: int, rng: np.random.Generator) -> list[Device]:
    """Devices along the Bay of Biscay coast: buoys offshore, cameras on the shore, drones between."""
    devices = []
    for i in range(n):
        kind = DEVICE_TYPES[i % len(DEVICE_TYPES)]
        lat = 43.3 + 1.5 * rng.random()
        lon = -9.0 + 7.0 * rng.random()
        devices.append(Device(f"{kind}-{i:03d}", kind, lat, lon))
    return devices


def _lognormal(rng: np.random.Generator, median: float, sigma: float) -> float:
    return float(median * math.exp(sigma * rng.standard_normal()))


def simulate_readings(
    rng: np.random.Generator, params: ScenarioParams, lat: float, when: datetime, algae: int
) -> dict[str, float]:
    """Readings that co-vary as in the sea: blooms raise chlorophyll, pH and day-time oxygen,
    storms raise turbidity and freshen the surface, warm water holds less oxygen."""
    day_of_year = when.timetuple().tm_yday
    hour = when.hour + when.minute / 60
    temp = (
        15.0
        + 4.0 * math.sin(2 * math.pi * (day_of_year - 110) / 365)
        - 0.8 * (lat - 44.0)
        + 0.6 * math.sin(2 * math.pi * (hour - 9) / 24)
        + 0.8 * algae
        + 0.4 * rng.standard_normal()
    )
    chlorophyll = _lognormal(rng, CHLOROPHYLL_BY_ALGAE[algae], 0.35)
    turbidity = _lognormal(rng, params.turbidity_median * (1 + 0.3 * algae), 0.4)
    salinity = 35.2 + params.salinity_shift - 0.02 * turbidity + 0.25 * rng.standard_normal()
    saturation = 14.62 - 0.3898 * temp + 0.006969 * temp**2 - 0.05 * (salinity - 35) / 5
    daylight = max(0.0, math.sin(math.pi * (hour - 6) / 12))
    photosynthesis = 0.06 * chlorophyll * (daylight - 0.35)
    oxygen = saturation + photosynthesis + 0.02 * min(turbidity, 40) + 0.25 * rng.standard_normal()
    ph = 8.08 + 0.012 * chlorophyll * daylight - 0.004 * turbidity + 0.03 * rng.standard_normal()
    return {
        "water_temp_c": round(temp, 3),
        "salinity_psu": round(max(salinity, 0.0), 3),
        "ph": round(ph, 3),
        "turbidity_ntu": round(turbidity, 3),
        "chlorophyll_ug_l": round(chlorophyll, 3),
        "dissolved_oxygen_mg_l": round(max(oxygen, 0.0), 3),
    }


def pollution_level(debris_level: str, turbidity: float, algae: int) -> str:
    score = DEBRIS_LEVELS.index(debris_level) * 1.2 + min(turbidity / 20, 1.5) + 0.5 * algae
    return POLLUTION_LEVELS[min(int(score), len(POLLUTION_LEVELS) - 1)]


def simulate(
    *,
    days: int,
    devices: int,
    per_day: int,
    scenario: Scenario = "normal",
    seed: int = 0,
    end: datetime | None = None,
    annotated_fraction: float = 0.6,
    image_size: int = 96,
) -> Iterator[SimulatedObservation]:
    """Yield observations over ``days`` ending at ``end`` (default: today 00:00 UTC)."""
    params = SCENARIOS[scenario]
    end = end or datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    rng = np.random.default_rng([seed, days, devices, per_day, list(SCENARIOS).index(scenario)])
    fleet = make_devices(devices, np.random.default_rng(seed))
    start = end - timedelta(days=days)
    for day in range(days):
        for device in fleet:
            for k in range(per_day):
                minutes = rng.uniform(0, 24 * 60)
                when = start + timedelta(days=day, minutes=float(minutes))
                when = when.replace(microsecond=0)
                debris_level = DEBRIS_LEVELS[rng.choice(3, p=params.debris_p)]
                debris_type = DEBRIS_TYPES[rng.integers(len(DEBRIS_TYPES))]
                algae = int(rng.choice(4, p=params.algae_p))
                jitter = 0.05 if device.device_type == "drone" else 0.0005
                lat = device.lat + jitter * rng.standard_normal()
                lon = device.lon + jitter * rng.standard_normal()
                readings = simulate_readings(rng, params, lat, when, algae)
                hour = when.hour + when.minute / 60
                image = render_image(
                    rng, params, debris_level=debris_level, debris_type=debris_type,
                    algae=algae, turbidity=readings["turbidity_ntu"], hour=hour, size=image_size,
                )
                labels: dict[str, object] = {
                    "plastic-detector": debris_level,
                    "algae-bloom": ALGAE_LEVELS[algae],
                    "water-quality": water_quality_indices(readings),
                    "coastal-pollution": pollution_level(
                        debris_level, readings["turbidity_ntu"], algae
                    ),
                }
                if debris_level != "none":
                    labels["debris-classifier"] = debris_type
                stem = f"{device.device_id}-{when:%Y%m%dT%H%M%S}-{scenario[:1]}{seed}-{k:03d}"
                yield SimulatedObservation(
                    stem=stem, device=device, observed_at=when, lat=lat, lon=lon,
                    readings=readings, labels=labels,
                    annotated=bool(rng.random() < annotated_fraction), image=image,
                )


def _write(landing: Location, key: str, data: bytes, overwrite: bool) -> bool:
    path = landing.path(key)
    if not overwrite and landing.fs.exists(path):
        return False
    landing.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with landing.fs.open(path, "wb") as fh:
        fh.write(data)
    return True


def _write_observation(landing: Location, obs: SimulatedObservation, overwrite: bool) -> int:
    image_key, sidecar_key = observation_keys(obs)
    return (_write(landing, image_key, obs.image, overwrite)
            + _write(landing, sidecar_key, json.dumps(obs.sidecar()).encode(), overwrite))


def observation_keys(obs: SimulatedObservation) -> tuple[str, str]:
    prefix = f"{obs.observed_at:%Y-%m-%d}/{obs.device.device_id}/{obs.stem}"
    return f"{prefix}.jpg", f"{prefix}.json"


def write_faults(landing: Location, sample: SimulatedObservation, overwrite: bool) -> int:
    """The bad input the field really sends: truncated image, broken or partial sidecars,
    an orphan image, a re-sent duplicate and an impossible reading. Ingestion must quarantine
    each one and keep the rest of the batch."""
    day = f"{sample.observed_at:%Y-%m-%d}/faults"
    doc = sample.sidecar()
    missing = {k: v for k, v in doc.items() if k not in ("observed_at", "lat")}
    impossible = dict(doc, readings=dict(doc["readings"], ph=19.5))
    files = {
        f"{day}/truncated.jpg": sample.image[: len(sample.image) // 3],
        f"{day}/truncated.json": json.dumps(dict(doc, observation_id="truncated")).encode(),
        f"{day}/notjson.jpg": sample.image,
        f"{day}/notjson.json": b"{device_id: buoy-000, this is not json",
        f"{day}/missing-fields.jpg": sample.image,
        f"{day}/missing-fields.json": json.dumps(missing).encode(),
        f"{day}/orphan.jpg": sample.image,
        f"{day}/duplicate.jpg": sample.image,
        f"{day}/duplicate.json": json.dumps(doc).encode(),
        f"{day}/impossible-ph.jpg": sample.image,
        f"{day}/impossible-ph.json": json.dumps(impossible).encode(),
    }
    return sum(_write(landing, k, v, overwrite) for k, v in files.items())


WRITERS = 8  # threads writing to an object store


def write_landing(
    landing: Location,
    observations: Iterator[SimulatedObservation],
    *,
    faults: bool = True,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, int]:
    """Write observations (and optionally faults) under ``landing``; existing files are kept.
    An object store is written by ``WRITERS`` threads (each file is a request or three:
    one at a time, three days of four devices took 50 s on S3), at most ``2 * WRITERS``
    observations held in memory at once."""
    written = observations_seen = 0
    first: SimulatedObservation | None = None
    iterator = observations
    if progress:
        from tqdm import tqdm

        iterator = tqdm(observations, desc="simulate", unit="obs")
    local = "file" in landing.fs.protocol
    with ThreadPoolExecutor(max_workers=1 if local else WRITERS) as pool:
        pending: deque[Future[int]] = deque()
        for obs in iterator:
            observations_seen += 1
            first = first or obs
            pending.append(pool.submit(_write_observation, landing, obs, overwrite))
            if len(pending) >= (2 if local else 2 * WRITERS):
                written += pending.popleft().result()
        written += sum(f.result() for f in pending)
    fault_files = write_faults(landing, first, overwrite) if faults and first else 0
    return {"observations": observations_seen, "files_written": written, "fault_files": fault_files}
