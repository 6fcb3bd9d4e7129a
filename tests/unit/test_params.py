"""params.yaml as stages read it: the fleet, the zoo's defaults, and named profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.params import apply_profile, load_params, profile_description
from models.zoo import ZOO, fleet
from tasks.shards import DatasetParams
from tasks.train import TrainParams

REPO = Path(__file__).resolve().parents[2]


def test_the_defaults_are_the_zoo_at_224_px_for_the_whole_fleet() -> None:
    params = load_params(REPO)
    assert fleet(params) == list(ZOO)
    for model in ZOO:
        train = TrainParams.load(REPO, model)
        assert train.backbone is None and train.image_size == 224  # the zoo's own backbone
        assert DatasetParams.load(REPO, model).image_size == 224


def test_the_cpu_small_profile_is_small_for_every_model() -> None:
    for model in ZOO:
        # debris types are objects a few pixels wide: the simulator's own 96 px keeps them
        size = 96 if model == "debris-classifier" else 64
        assert TrainParams.load(REPO, model, "cpu-small").backbone == "resnet18"
        assert TrainParams.load(REPO, model, "cpu-small").image_size == size
        assert DatasetParams.load(REPO, model, "cpu-small").image_size == size
    assert profile_description(load_params(REPO), "cpu-small").startswith("cpu-small (2 CPU")
    assert TrainParams.load(REPO, "plastic-detector", "cpu-small", backbone="resnet34"
                            ).backbone == "resnet34"  # a run-time override still wins


def test_a_profile_sets_every_model_then_per_model_and_never_the_file_it_was_laid_over(
        ) -> None:
    params = {"train": {"m": {"lr": 1}, "n": {"lr": 1}},
              "profiles": {"p": {"train": {"lr": 2}, "models": {"n": {"train": {"lr": 3}}}}}}
    assert apply_profile(params, "p")["train"] == {"m": {"lr": 2}, "n": {"lr": 3}}
    assert params["train"]["m"]["lr"] == 1
    assert apply_profile(params, "default") is params


def test_bad_profiles_and_fleets_are_refused_by_name() -> None:
    params = {"profiles": {"cpu-small": {}, "gpu-a100": {}}}
    with pytest.raises(KeyError, match=r"no profile 'laptop' .*cpu-small, gpu-a100"):
        apply_profile(params, "laptop")
    with pytest.raises(ValueError, match=r"profiles.p: unknown key\(s\) trian"):
        apply_profile({"profiles": {"p": {"trian": {}}}}, "p")
    with pytest.raises(ValueError, match="unknown model.* kraken-detector"):
        fleet({"fleet": ["plastic-detector", "kraken-detector"]})
    with pytest.raises(ValueError, match=r"train.plastic-detector: unknown key\(s\) epochs"):
        TrainParams(**{}).load(REPO, "plastic-detector", epochs=3)
