"""Data tests: splits, leakage, shard stability and reference statistics of a built dataset."""

from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from core.store import filesystem
from oceanml.simulator import simulate, write_landing
from tasks.dataset import select_manifest, write_manifest
from tasks.ingest import ingest
from tasks.shards import DRIFT_FEATURES, SPLITS, DatasetParams, build, split_of

END = datetime(2026, 11, 20, tzinfo=UTC)
PARAMS = DatasetParams(label_key="plastic-detector", image_size=32, shard_rows=8)


def grow(settings, sessions, days: int, end: datetime) -> None:
    obs = simulate(days=days, devices=3, per_day=12, end=end, seed=days)
    write_landing(filesystem(settings.landing_url), obs, faults=False)
    ingest(settings, sessions, now=end)


def build_version(settings, sessions, out: Path) -> dict:
    manifest = out.parent / f"{out.name}.csv"
    write_manifest(select_manifest(sessions, PARAMS.label_key).frame, manifest)
    return build(manifest, out, PARAMS, settings)


def hashes(out: Path, split: str) -> list[str]:
    return [h for shard in sorted(out.glob(f"{split}-*.parquet"))
            for h in pq.read_table(shard, columns=["content_hash"]).column(0).to_pylist()]


def test_split_is_a_function_of_the_id_with_the_configured_ratios() -> None:
    ids = [f"{i:064x}" for i in range(20000)]
    splits = [split_of(i, (0.8, 0.1, 0.1)) for i in ids]
    assert splits == [split_of(i, (0.8, 0.1, 0.1)) for i in ids]
    assert splits.count("train") / len(ids) == pytest.approx(0.8, abs=0.02)
    assert splits.count("test") / len(ids) == pytest.approx(0.1, abs=0.02)


def test_no_observation_is_in_two_splits_and_only_labelled_ones_are_in(settings, sessions, tmp_path):
    grow(settings, sessions, 2, END)
    card = build_version(settings, sessions, tmp_path / "v1")
    by_split = {s: set(hashes(tmp_path / "v1", s)) for s in SPLITS}
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    assert not (by_split["val"] & by_split["test"])
    assert sum(map(len, by_split.values())) == sum(card["split_counts"].values())
    labelled = len(select_manifest(sessions, "plastic-detector").frame)
    assert sum(card["split_counts"].values()) == labelled < 2 * 3 * 12


def test_growth_keeps_splits_and_leaves_old_shards_byte_identical(settings, sessions, tmp_path):
    grow(settings, sessions, 2, END)
    build_version(settings, sessions, tmp_path / "v1")
    grow(settings, sessions, 1, END.replace(day=21))  # a later day arrives
    build_version(settings, sessions, tmp_path / "v2")
    for split in SPLITS:
        old, new = hashes(tmp_path / "v1", split), hashes(tmp_path / "v2", split)
        assert new[: len(old)] == old  # same items, same split, same order
    old_shards = sorted((tmp_path / "v1").glob("*.parquet"))
    new_shards = sorted((tmp_path / "v2").glob("*.parquet"))
    assert old_shards and len(new_shards) > len(old_shards)
    for shard in old_shards:  # shards are cut per day: a new day only adds files
        assert shard.read_bytes() == (tmp_path / "v2" / shard.name).read_bytes()


def test_a_rebuild_reuses_cached_shards_and_encodes_only_new_ones(settings, sessions, tmp_path):
    grow(settings, sessions, 2, END)
    manifest = tmp_path / "m.csv"
    write_manifest(select_manifest(sessions, PARAMS.label_key).frame, manifest)
    cache = tmp_path / "cache"
    first = build(manifest, tmp_path / "v1", PARAMS, settings, cache_dir=cache)
    assert first["shards"]["reused"] == 0 and first["shards"]["encoded"] > 0
    grow(settings, sessions, 1, END.replace(day=21))
    write_manifest(select_manifest(sessions, PARAMS.label_key).frame, manifest)
    second = build(manifest, tmp_path / "v2", PARAMS, settings, cache_dir=cache)
    assert second["shards"]["reused"] == sum(first["shards"].values())
    assert 0 < second["shards"]["encoded"] < second["shards"]["reused"]
    uncached = build(manifest, tmp_path / "v3", PARAMS, settings)
    for shard in sorted((tmp_path / "v3").glob("*.parquet")):  # the cache changes no byte
        assert shard.read_bytes() == (tmp_path / "v2" / shard.name).read_bytes()
    assert uncached["split_counts"] == second["split_counts"]
    assert len(list(cache.glob("*.parquet"))) == sum(second["shards"].values())


def test_reference_statistics_cover_every_drift_feature(settings, sessions, tmp_path) -> None:
    import json

    grow(settings, sessions, 2, END)
    build_version(settings, sessions, tmp_path / "v1")
    stats = json.loads((tmp_path / "v1" / "reference_stats.json").read_text())
    assert set(stats["numeric"]) == set(DRIFT_FEATURES)
    assert stats["n"] == len(hashes(tmp_path / "v1", "train"))
    assert all(len(f["edges"]) >= 2 for f in stats["numeric"].values())


@pytest.mark.parametrize("model", ["algae-bloom", "debris-classifier", "water-quality",
                                   "coastal-pollution"])
def test_every_model_of_the_zoo_gets_a_dataset_with_valid_labels(settings, sessions, tmp_path,
                                                                  model) -> None:
    import json as _json

    from models.zoo import get_spec
    from tasks.shards import DatasetParams

    grow(settings, sessions, 2, END)
    params = DatasetParams.load(Path(__file__).resolve().parents[2], model, "cpu-small")
    manifest = tmp_path / "m.csv"
    write_manifest(select_manifest(sessions, params).frame, manifest)
    card = build(manifest, tmp_path / "ds", DatasetParams(label_key=params.label_key, image_size=32, shard_rows=8),
                 settings)
    spec = get_spec(model)
    labels = [label for counts in card["class_counts"].values() for label in counts]
    if spec.task == "classification":
        assert labels and set(labels) <= set(spec.outputs)
    else:
        values = [_json.loads(label) for label in labels]
        assert values and all(len(v) == spec.num_outputs and all(0 <= x <= 1 for x in v)
                          for v in values)


def test_a_stuck_dvc_command_is_stopped_at_its_timeout_with_its_name(tmp_path) -> None:
    """``dvc repro`` of a stage whose command hangs: stopped with what it started."""
    import subprocess
    import time

    from core import versioning

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    versioning.dvc(tmp_path, "init")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  hang:\n    cmd: python -c \"import time; open('started','w'); "
        "time.sleep(600)\"\n    outs: [out]\n")
    started = time.monotonic()
    with pytest.raises(versioning.DvcTimeout, match=r"dvc repro hang did not finish within 5 s"):
        versioning.dvc(tmp_path, "repro", "hang", timeout_s=5)
    assert time.monotonic() - started < 60 and (tmp_path / "started").exists()
    stray = subprocess.run(["pgrep", "-f", "time.sleep\\(600\\)"], capture_output=True)
    assert stray.returncode == 1, stray.stdout  # the stage's command was stopped too


def test_a_push_that_hangs_is_stopped_at_its_timeout_and_not_tried_again(
        settings, tmp_path, monkeypatch) -> None:
    """A push to a remote that stopped answering: stopped at OCEANML_DVC_TIMEOUT_S, once. A
    failed push is tried three times; a hung one is not, since each try would hold the project
    lock, and every other branch's dataset build, for the whole timeout."""
    import os
    import subprocess
    import time

    from core import versioning
    from core.settings import get_settings
    from tests.deployed import alive
    from tests.hung_dvc import hang_pushes, hung_pushes

    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    versioning.ensure_repo(repo, str(tmp_path / "remote"))
    shim = tmp_path / "shim"
    monkeypatch.setenv("PYTHONPATH", hang_pushes(shim), prepend=os.pathsep)
    monkeypatch.setenv("OCEANML_DVC_TIMEOUT_S", "3")
    get_settings.cache_clear()  # the settings fixture clears it again after the test
    versioning.dvc(repo, "status", timeout_s=120)  # not a push: runs as usual under the shim
    assert not hung_pushes(shim)
    started = time.monotonic()
    with pytest.raises(versioning.DvcTimeout,
                       match=r"^dvc push did not finish within 3 s and was stopped"):
        versioning.transfer(repo, "push")
    took = time.monotonic() - started
    [pid] = hung_pushes(shim)  # one attempt, not TRANSFER_ATTEMPTS
    assert not alive(pid)
    assert took < 3 + versioning.TRANSFER_BACKOFF_S, took
