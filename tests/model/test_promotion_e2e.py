"""Promotion end to end on trained models: a champion, a challenger trained on shuffled labels
(refused, the champion stays), a better challenger (promoted), a rollback (the previous
champion serves again, ``models:/NAME@champion`` loads it), and the history of all three."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from core.database import session_factory
from core.params_schema import PromotionPolicy
from core.registry import client
from core.settings import get_settings
from models.datamodule import read_split
from models.zoo import get_spec
from oceanml.cli import app
from tasks.champion import rollback
from tasks.evaluate import evaluate
from tasks.promote import promote
from tasks.results import PromotionResult
from tasks.train import train_model
from tests.conftest import simulated_dataset, train_params

pytestmark = pytest.mark.slow
END = datetime(2026, 11, 20, tzinfo=UTC)
SIZE = 64
POLICY = PromotionPolicy(metric="macro_f1", floor=0.2, margin=0.01, max_slice_drop=0.5,
                         confidence=0.9)


def shuffled_copy(src, dest, seed: int = 3):
    """The dataset with its train and val labels permuted (the test split untouched)."""
    shutil.copytree(src, dest)
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        shards = sorted(dest.glob(f"{split}-*.parquet"))
        labels = read_split(dest, split, ["label"])["label"]
        permuted = list(rng.permutation(labels))
        for shard in shards:
            table = pq.read_table(shard)
            n = table.num_rows
            table = table.set_column(table.column_names.index("label"), "label",
                                     pa.array(permuted[:n]))
            permuted = permuted[n:]
            pq.write_table(table, shard, compression="none", row_group_size=64)
    return dest


def test_refused_promoted_rolled_back_and_the_history_says_so(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OCEANML_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OCEANML_PROJECT_DIR", str(tmp_path))
    get_settings.cache_clear()
    settings = get_settings()
    sessions, mlc = session_factory(settings.db_url), client(settings)
    data = simulated_dataset(settings, sessions, "plastic-detector", tmp_path / "ds", size=SIZE,
                             days=2, devices=6, per_day=60, end=END)
    spec = get_spec("plastic-detector", backbone="resnet18", input_size=SIZE)

    def train(key: str, epochs: int, lr: float, where=data) -> str:
        params = train_params(backbone="resnet18", image_size=SIZE, max_epochs=epochs,
                              patience=epochs, lr=lr)
        return train_model(spec, where, key, params, settings, {"git_commit": "e2e"}).model_version

    def gate(version: str, policy: PromotionPolicy = POLICY) -> PromotionResult:
        def judged(champion=None, current=True):
            from tasks.evaluate import CURRENT

            return evaluate(sessions, mlc, spec, "ds-e2e", version, lambda: data, None,
                            champion_version=CURRENT if current else champion)

        return promote(sessions, mlc, spec.name, judged(), policy, f"e2e-{version}",
                       reevaluate=lambda c: judged(c, current=False))

    noise = train("shuffled", 2, 2e-3, shuffled_copy(data, tmp_path / "shuffled"))
    # no champion yet, and no floor to speak of: only the trivial predictors refuse it
    first = gate(noise, POLICY.model_copy(update={"floor": 0.0}))
    checks = {c["name"]: c for c in first.decision["checks"]}
    assert checks["floor"]["passed"] and not checks["trivial"]["passed"]
    assert not first.promoted and first.reason == checks["trivial"]["detail"]
    assert "does not beat the" in first.reason
    weak = train("weak", 2, 1e-3)
    first_champion = gate(weak)
    assert first_champion.promoted, first_champion.reason  # floor and trivial predictors
    refused = gate(noise)
    assert not refused.promoted and refused.champion_version == weak, refused.reason
    strong = train("strong", 8, 2e-3)
    promoted = gate(strong)
    assert promoted.promoted and "lower bound" in promoted.reason, promoted.reason
    assert promoted.decision["interval"]["lower_bound"] > POLICY.margin

    back = rollback(sessions, mlc, spec.name, None, "strong misfires on drones", "cli:test")
    assert (back["version"], back["previous_version"]) == (weak, strong)
    import mlflow.pytorch

    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)  # as a user would
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", settings.mlflow_tracking_uri)
    served = mlflow.pytorch.load_model(f"models:/{spec.name}@champion", map_location="cpu")
    from core.registry import load_model

    images = torch.randint(0, 255, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(served.eval()(images),
                              load_model(mlc, spec.name, weak).eval()(images))

    result = CliRunner().invoke(app, ["models", "history", spec.name, "--json"])
    assert result.exit_code == 0, result.output
    changes = [(c["action"], c["previous_version"], c["version"])
               for c in json.loads(result.stdout)]
    assert changes == [("promote", None, weak), ("promote", weak, strong),
                       ("rollback", strong, weak)]
    get_settings.cache_clear()
