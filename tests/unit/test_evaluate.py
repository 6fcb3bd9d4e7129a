import pytest

from tasks.evaluate import score

CLASSES = ("none", "light", "severe")


def test_overall_and_per_class_metrics_match_a_hand_count() -> None:
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    r = score(y_true, y_pred, CLASSES)
    assert r["overall"]["accuracy"] == pytest.approx(4 / 6)
    # none: p=1/2 r=1/2; light: p=2/3 r=1; severe: p=1 r=1/2
    f1 = [0.5, 0.8, 2 / 3]
    assert r["overall"]["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert r["per_class"]["light"]["precision"] == pytest.approx(2 / 3)
    assert r["per_class"]["severe"]["support"] == 2
    assert r["confusion"][0] == [1, 1, 0]


def test_slices_group_items_and_multi_valued_tags(monkeypatch) -> None:
    monkeypatch.setattr("tasks.evaluate.MIN_SLICE", 2)
    y_true = [0, 1, 2, 0, 1]
    y_pred = [0, 1, 0, 0, 2]
    slices = {"device_type": ["buoy", "buoy", "drone", "drone", "drone"],
              "tag": [["calm-sea"], ["calm-sea", "glare"], [], ["glare"], ["glare"]]}
    r = score(y_true, y_pred, CLASSES, slices)
    assert r["slices"]["device_type=buoy"]["accuracy"] == 1.0
    assert r["slices"]["device_type=drone"]["accuracy"] == pytest.approx(1 / 3)
    assert r["slices"]["tag=glare"]["n"] == 3
    assert "tag=calm-sea" in r["slices"]


def test_small_slices_are_left_out() -> None:
    r = score([0, 1], [0, 1], CLASSES, {"device_type": ["buoy", "drone"]})
    assert r["slices"] == {}
