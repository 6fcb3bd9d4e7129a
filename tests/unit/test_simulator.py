import json
from datetime import UTC, datetime

import numpy as np

from core.labels import WATER_QUALITY_TARGETS
from oceanml.simulator import simulate
from tasks.validate import inspect_image, parse_sidecar

END = datetime(2026, 11, 20, tzinfo=UTC)


def sample(scenario: str, n_days: int = 1, seed: int = 0) -> list:
    return list(simulate(days=n_days, devices=6, per_day=40, scenario=scenario, seed=seed, end=END))


def test_same_arguments_give_the_same_bytes() -> None:
    a, b = sample("normal"), sample("normal")
    assert [o.image for o in a] == [o.image for o in b]
    assert [o.sidecar() for o in a] == [o.sidecar() for o in b]


def test_every_simulated_observation_passes_validation() -> None:
    for obs in sample("storm") + sample("bloom"):
        parse_sidecar(json.dumps(obs.sidecar()).encode(), now=END)
        info = inspect_image(obs.image, max_bytes=10**6, max_pixels=10**6)
        assert (info.width, info.height) == (96, 96)


def test_scenarios_shift_readings_and_images_the_way_the_sea_does() -> None:
    def mean(obs, key):
        return np.mean([o.readings[key] for o in obs])

    normal, storm, bloom = sample("normal"), sample("storm"), sample("bloom")
    assert mean(storm, "turbidity_ntu") > 5 * mean(normal, "turbidity_ntu")
    assert mean(storm, "salinity_psu") < mean(normal, "salinity_psu") - 1
    assert mean(bloom, "chlorophyll_ug_l") > 3 * mean(normal, "chlorophyll_ug_l")

    def brightness(obs):
        return np.mean([inspect_image(o.image, max_bytes=10**6, max_pixels=10**6)
                        .stats["brightness"] for o in obs])

    def green(obs):
        return np.mean([inspect_image(o.image, max_bytes=10**6, max_pixels=10**6)
                        .stats["green_ratio"] for o in obs])

    assert brightness(storm) < brightness(normal)
    assert green(bloom) > green(normal)


def test_debris_label_follows_what_is_drawn() -> None:
    """Severe debris scenes have more colour variation than clean water."""
    obs = sample("normal", seed=3)
    sat = {level: [] for level in ("none", "light", "severe")}
    for o in obs:
        stats = inspect_image(o.image, max_bytes=10**6, max_pixels=10**6).stats
        sat[o.labels["plastic-detector"]].append(stats["contrast"])
    assert np.mean(sat["severe"]) > np.mean(sat["none"])


def test_a_fraction_is_annotated_with_labels_for_every_model() -> None:
    obs = sample("normal")
    annotated = [o for o in obs if "labels" in o.sidecar()]
    assert 0.4 < len(annotated) / len(obs) < 0.8
    labels = annotated[0].labels
    assert {"plastic-detector", "algae-bloom", "water-quality", "coastal-pollution"} <= set(labels)
    assert len(labels["water-quality"]) == len(WATER_QUALITY_TARGETS) and all(0 <= v <= 1 for v in labels["water-quality"])
