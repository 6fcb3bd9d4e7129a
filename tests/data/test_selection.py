"""Dataset specs: selection filters, weak labels from LLM tags, and refusing a bad spec."""

import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
import yaml

from core.db import SENSOR_COLUMNS
from core.labels import WATER_QUALITY_TARGETS, water_quality_indices, water_quality_label
from core.llm import HeuristicProvider
from core.store import filesystem
from oceanml.simulator import simulate, write_landing
from tasks.dataset import build_dataset, check_labels, select_manifest
from tasks.enrich import enrich
from tasks.ingest import ingest
from tasks.shards import DatasetParams
from tests.conftest import make_project

END = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.fixture
def landed(settings, sessions):
    """Three days of six devices (buoys, drones, cameras), ingested; half of it enriched."""
    obs = simulate(days=3, devices=6, per_day=10, end=END, seed=3)
    write_landing(filesystem(settings.landing_url), obs, faults=False)
    ingest(settings, sessions, now=END)
    return sessions


def params(**section) -> DatasetParams:
    return DatasetParams.from_dict({"label_key": "plastic-detector", "image_size": 32, **section})


def manifest(sessions, now=END, **section) -> pd.DataFrame:
    return select_manifest(sessions, params(**section), now=now).frame


def test_no_filter_keeps_every_labelled_image_and_says_why_the_rest_is_out(landed) -> None:
    selected = select_manifest(landed, params(), now=END)
    assert len(selected.frame) == selected.reasons["selected"] > 0
    assert set(selected.reasons) == {"selected", "no_label"}  # the simulator's unannotated ones


def test_time_window_absolute_and_sliding(landed) -> None:
    everything = manifest(landed)
    times = pd.to_datetime(everything["observed_at"])
    since = END - timedelta(days=2)
    window = manifest(landed, selection={"since": since.isoformat(), "until": END.isoformat()})
    assert 0 < len(window) < len(everything)
    assert (pd.to_datetime(window["observed_at"]) >= since).all()
    assert len(window) == ((times >= since) & (times < END)).sum()
    sliding = manifest(landed, now=END, selection={"last_days": 1})
    assert len(sliding) == (times >= END - timedelta(days=1)).sum() > 0
    assert manifest(landed, now=END + timedelta(days=30), selection={"last_days": 1}).empty


def test_devices_by_glob_and_device_types(landed) -> None:
    buoys = manifest(landed, selection={"devices": ["buoy-*"]})
    assert len(buoys) > 0 and buoys["device_id"].str.startswith("buoy-").all()
    one = manifest(landed, selection={"devices": ["drone-001"]})
    assert set(one["device_id"]) == {"drone-001"}
    typed = manifest(landed, selection={"device_types": ["camera", "drone"]})
    assert set(typed["device_type"]) == {"camera", "drone"}


def test_quality_filters(landed) -> None:
    everything = manifest(landed)
    contrast = everything["image_contrast"].median()
    sharp = manifest(landed, selection={"min_contrast": float(contrast)})
    assert 0 < len(sharp) < len(everything) and (sharp["image_contrast"] >= contrast).all()
    bright = everything["image_brightness"].median()
    dim = manifest(landed, selection={"brightness": [0.0, float(bright)]})
    assert 0 < len(dim) < len(everything) and (dim["image_brightness"] <= bright).all()
    assert manifest(landed, selection={"min_image_side": 97}).empty  # the simulator's are 96 px


def test_tag_filters_need_enrichment_and_respect_tags(landed) -> None:
    selected = select_manifest(landed, params(selection={"require_tags": ["calm-sea"]}), now=END)
    assert selected.frame.empty and selected.reasons.get("not_enriched", 0) > 0
    enrich(landed, HeuristicProvider())
    calm = manifest(landed, selection={"require_tags": ["calm-sea"]})
    rough = manifest(landed, selection={"exclude_tags": ["calm-sea"]})
    assert len(calm) > 0 and len(rough) > 0
    assert calm["llm_tags"].str.split(",").map(lambda t: "calm-sea" in t).all()
    assert not rough["llm_tags"].str.split(",").map(lambda t: "calm-sea" in t).any()
    assert len(calm) + len(rough) == len(manifest(landed))


WEAK = {"rules": [{"tags": ["algae-bloom"], "label": "high"}, {"tags": ["green-water"],
                                                              "label": "low"}],
        "default": "none"}


def test_weak_labels_fill_in_where_there_is_no_annotation(landed) -> None:
    enrich(landed, HeuristicProvider())
    spec = {"label_key": "algae-bloom", "image_size": 32, "weak_labels": WEAK}
    annotated = select_manifest(landed, DatasetParams.from_dict(spec), now=END).frame
    both = select_manifest(landed, DatasetParams.from_dict(
        {**spec, "label_source": "annotated_then_weak"}), now=END).frame
    weak = select_manifest(landed, DatasetParams.from_dict(
        {**spec, "label_source": "weak"}), now=END).frame
    assert set(annotated["label_source"]) == {"annotated"}
    assert len(both) == len(weak) > len(annotated)  # every enriched image gets a label
    merged = both.set_index("content_hash")
    kept = merged.loc[annotated["content_hash"]]
    assert (kept["label"].to_numpy() == annotated["label"].to_numpy()).all()  # annotations win
    assert set(weak["label_source"]) == {"weak"} and set(weak["label"]) <= {"high", "low", "none"}
    for tags, label in zip(weak["llm_tags"].str.split(","), weak["label"], strict=True):
        expected = "high" if "algae-bloom" in tags else "low" if "green-water" in tags else "none"
        assert label == expected


def test_water_quality_is_labelled_from_the_readings_of_every_observation(landed) -> None:
    """Every observation with readings gets the indices its readings give, annotated or not;
    a stored annotation of the older five indices is read without salinity balance."""
    spec = {"label_key": "water-quality", "image_size": 32}
    annotated = select_manifest(landed, DatasetParams.from_dict(spec), now=END).frame
    readings = select_manifest(landed, DatasetParams.from_dict(
        {**spec, "label_source": "readings_then_annotated"}), now=END).frame
    assert len(readings) > len(annotated) > 0
    assert set(readings["label_source"]) == {"readings"}
    for _, row in readings.iterrows():
        values = {name: row[name] for name in SENSOR_COLUMNS}
        assert json.loads(row["label"]) == water_quality_indices(values)
    assert len(json.loads(readings["label"].iloc[0])) == len(WATER_QUALITY_TARGETS) == 4
    five = [0.9, 0.8, 0.1, 0.95, 0.7]
    assert water_quality_label(five) == [0.9, 0.8, 0.1, 0.7]
    assert water_quality_label([0.9, 0.8, 0.1, 0.7]) == [0.9, 0.8, 0.1, 0.7]
    with pytest.raises(ValueError, match="no label is computed from readings for 'plastic"):
        params(label_source="readings_then_annotated")


@pytest.mark.parametrize(("section", "message"), [
    ({"selection": {"devise": ["buoy-*"]}}, r"datasets\.selection\.devise: unknown key"),
    ({"selection": {"require_tags": ["plastic"]}}, "not in the vocabulary"),
    ({"selection": {"brightness": [0.9, 0.1]}}, "brightness"),
    ({"selection": {"device_types": ["buoy", "underwater_camera"]}},
     "device_types: underwater_camera not among the known types"),
    ({"split": [0.8, 0.3, 0.1]}, "summing to 1"),
    ({"label_source": "weak"}, "needs weak_labels"),
    ({"label_source": "guess"}, r"label_source: Input should be 'annotated'.*\(got 'guess'\)"),
    ({"weak_labels": {"rules": [{"tags": ["nope"], "label": "x"}]}}, "not in the vocabulary"),
])
def test_a_bad_spec_is_refused_by_name(section, message) -> None:
    with pytest.raises(ValueError, match=message):
        params(**section)


def test_weak_labels_must_be_classes_of_the_model() -> None:
    spec = DatasetParams.from_dict({"label_key": "algae-bloom", "image_size": 32,
                                    "label_source": "weak",
                                    "weak_labels": {"rules": [{"tags": ["algae-bloom"],
                                                               "label": "severe"}]}})
    with pytest.raises(ValueError, match="severe not among the classes"):
        check_labels("algae-bloom", spec)
    with pytest.raises(ValueError, match="classification"):
        check_labels("water-quality", spec)


def test_changing_the_selection_in_params_is_a_new_version_and_back_is_the_old(
        landed, settings) -> None:
    project = make_project(settings.project_dir)
    first = build_dataset(settings, landed, "plastic-detector", now=END)
    again = build_dataset(settings, landed, "plastic-detector", now=END)
    assert again.version == first.version and not again.created

    params_file = project / "params.yaml"
    doc = yaml.safe_load(params_file.read_text())
    original = params_file.read_text()
    doc["datasets"]["plastic-detector"]["selection"] = {"device_types": ["buoy"]}
    params_file.write_text(yaml.safe_dump(doc))
    buoys = build_dataset(settings, landed, "plastic-detector", now=END)
    assert buoys.created and buoys.version != first.version
    assert sum(buoys.split_counts.values()) < sum(first.split_counts.values())
    assert buoys.selection["device_types"] > 0

    params_file.write_text(original)
    back = build_dataset(settings, landed, "plastic-detector", now=END)
    assert back.version == first.version and not back.created
