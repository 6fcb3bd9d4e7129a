"""Label vocabularies of the five models, shared by the simulator, datasets and the zoo."""

from __future__ import annotations

# The network's kinds of device; "unknown" is what a sidecar without a type is stored as.
DEVICE_TYPES = ("buoy", "drone", "camera")
KNOWN_DEVICE_TYPES = (*DEVICE_TYPES, "unknown")
DEBRIS_LEVELS = ("none", "light", "severe")
ALGAE_LEVELS = ("none", "low", "medium", "high")
DEBRIS_TYPES = ("bottle", "bag", "net", "metal", "glass", "other")
POLLUTION_LEVELS = ("clean", "low", "moderate", "high", "critical")
# Salinity is read by the buoys' sensors; it is not in the image (on calm days a perfect reading
# of the sediment explains ~1% of its spread), so the image model does not predict it.
WATER_QUALITY_TARGETS = ("clarity", "oxygenation", "trophic_state", "ph_balance")
# Annotations stored before salinity left the targets: (clarity, oxygenation, trophic_state,
# salinity_balance, ph_balance). Read through ``water_quality_label``; never rewritten.
_FIVE_INDEX_SALINITY = 3


OXYGEN_SPAN_MG_L = 14.0


def _unit(x: float) -> float:
    return round(min(max(x, 0.0), 1.0), 4)


def water_quality_indices(readings: dict[str, float]) -> list[float]:
    """The indices of ``WATER_QUALITY_TARGETS`` in [0, 1], higher is healthier except
    ``trophic_state`` (algal richness)."""
    return [
        _unit(1.0 - readings["turbidity_ntu"] / 50.0),
        # 0-14 mg/L, the span of sea water (saturation is ~14.6 at 0 C): a cap at 10 mg/L
        # read 1.0 for 98% of the demo's observations, a target with nothing left to learn
        _unit(readings["dissolved_oxygen_mg_l"] / OXYGEN_SPAN_MG_L),
        _unit(readings["chlorophyll_ug_l"] / 40.0),
        _unit(1.0 - abs(readings["ph"] - 8.1) / 1.0),
    ]


def water_quality_label(value: object) -> object:
    """A stored water-quality annotation in the current target layout: one of five indices
    (salinity balance among them) loses salinity; anything else is returned as stored."""
    if isinstance(value, list) and len(value) == len(WATER_QUALITY_TARGETS) + 1:
        return [v for i, v in enumerate(value) if i != _FIVE_INDEX_SALINITY]
    return value


# Labels that are a function of an observation's sensor readings, by label key: a dataset
# with ``label_source: readings_then_annotated`` labels every observation with readings.
READINGS_LABELS = {"water-quality": water_quality_indices}
