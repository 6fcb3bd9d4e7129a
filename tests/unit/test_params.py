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
    with pytest.raises(ValueError, match=r"train\.plastic-detector\.epochs: unknown key"):
        TrainParams.load(REPO, "plastic-detector", epochs=3)


def write(tmp_path: Path, change) -> Path:
    """The shipped params.yaml with one change, in a project of its own."""
    import yaml

    doc = yaml.safe_load((REPO / "params.yaml").read_text())
    change(doc)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["train"]["algae-bloom"].update(lr="fast"),
     r"train\.algae-bloom\.lr: Input should be a valid number.*\(got 'fast'\)"),
    (lambda d: d["train"]["algae-bloom"].pop("max_epochs"),
     r"train\.algae-bloom\.max_epochs: missing \(params.yaml must set it\)"),
    (lambda d: d["datasets"]["debris-classifier"].update(split=[0.5, 0.5, 0.5]),
     r"datasets\.debris-classifier\.split: three ratios summing to 1"),
    (lambda d: d["datasets"]["algae-bloom"]["selection"].update(min_image_sid=32),
     r"datasets\.algae-bloom\.selection\.min_image_sid: unknown key"),
    (lambda d: d["drift"].update(share_treshold=0.3),
     r"drift\.share_treshold: unknown key"),
    (lambda d: d["drift"]["performance"].update(metric="auc"),
     r"drift\.performance\.metric: Input should be 'accuracy' or 'macro_f1'"),
    (lambda d: d["promote"]["per_model"]["water-quality"].update(confidence=1.5),
     r"promote\.per_model\.water-quality\.confidence: Input should be less than 1"),
    (lambda d: d["profiles"]["cpu-small"]["models"]["debris-classifier"].update(trian={}),
     r"profiles\.cpu-small\.models\.debris-classifier\.trian: unknown key"),
    (lambda d: d.update(promotion={}), r"params\.yaml: promotion: unknown key"),
])
def test_every_section_refuses_a_bad_key_or_value_by_its_place(tmp_path, change,
                                                                 message) -> None:
    """Whatever stage reads the file first refuses it, naming the key and its place: the
    dataset stage for a typo in the drift section as much as the drift stage."""
    from core.params import ParamsError
    from tasks.drift import load_thresholds
    from tasks.promote import load_policy

    project = write(tmp_path, change)
    for read in (lambda: DatasetParams.load(project, "plastic-detector"),
                 lambda: TrainParams.load(project, "plastic-detector"),
                 lambda: load_policy(project, "plastic-detector"),
                 lambda: load_thresholds(project)):
        with pytest.raises(ParamsError, match=message):
            read()


def test_a_profile_key_no_section_has_is_named_with_the_profile(tmp_path) -> None:
    from core.params import ParamsError

    project = write(tmp_path, lambda d: d["profiles"]["cpu-small"]["train"].update(epochs=3))
    TrainParams.load(project, "plastic-detector")  # the file as written is fine
    with pytest.raises(ParamsError, match=r"\(profile cpu-small\): .*"
                                          r"train\.plastic-detector\.epochs: unknown key"):
        TrainParams.load(project, "plastic-detector", "cpu-small")
