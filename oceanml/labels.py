"""Label vocabularies of the five models, shared by the simulator, datasets and the zoo."""

from __future__ import annotations

# The network's kinds of device; "unknown" is what a sidecar without a type is stored as.
DEVICE_TYPES = ("buoy", "drone", "camera")
KNOWN_DEVICE_TYPES = (*DEVICE_TYPES, "unknown")
DEBRIS_LEVELS = ("none", "light", "severe")
ALGAE_LEVELS = ("none", "low", "medium", "high")
DEBRIS_TYPES = ("bottle", "bag", "net", "metal", "glass", "other")
POLLUTION_LEVELS = ("clean", "low", "moderate", "high", "critical")
WATER_QUALITY_TARGETS = ("clarity", "oxygenation", "trophic_state", "salinity_balance", "ph_balance")


def _unit(x: float) -> float:
    return round(min(max(x, 0.0), 1.0), 4)


def water_quality_indices(readings: dict[str, float]) -> list[float]:
    """Five indices in [0, 1], higher is healthier except ``trophic_state`` (algal richness)."""
    return [
        _unit(1.0 - readings["turbidity_ntu"] / 50.0),
        _unit(readings["dissolved_oxygen_mg_l"] / 10.0),
        _unit(readings["chlorophyll_ug_l"] / 40.0),
        _unit(1.0 - abs(readings["salinity_psu"] - 35.0) / 10.0),
        _unit(1.0 - abs(readings["ph"] - 8.1) / 1.0),
    ]
