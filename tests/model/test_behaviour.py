"""A plastic detector trained by our own training function: how it behaves, and promotion end
to end with it as the strong challenger. A champion, a challenger trained on shuffled labels
(refused, the champion stays), this better one (promoted), a rollback (the previous champion
serves again, ``models:/NAME@champion`` loads it), and the history of all three. One module,
so the detector is trained once for both proofs."""

from __future__ import annotations

import io
import json
import shutil
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from core.database import session_factory
from core.params_schema import PromotionPolicy
from core.registry import client as mlflow_client
from core.registry import load_model
from core.settings import get_settings
from models.datamodule import read_split
from models.zoo import get_spec
from oceanml.cli import app
from oceanml.scene import SCENARIOS, render_image
from oceanml.simulator import simulate
from tasks.champion import rollback
from tasks.evaluate import CURRENT, evaluate, report_for
from tasks.promote import promote
from tasks.results import PromotionResult
from tasks.train import train_model
from tests.conftest import simulated_dataset, train_params

pytestmark = pytest.mark.slow
END = datetime(2026, 11, 20, tzinfo=UTC)
SIZE = 64
POLICY = PromotionPolicy(metric="macro_f1", floor=0.2, margin=0.01, max_slice_drop=0.5,
                         confidence=0.9)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Ten epochs on two simulated days of six devices; the home, registry and dataset stay
    for the promotion test."""
    root = tmp_path_factory.mktemp("behaviour")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OCEANML_HOME", str(root / "home"))
        mp.setenv("OCEANML_PROJECT_DIR", str(root))
        get_settings.cache_clear()
        settings = get_settings()
        sessions = session_factory(settings.db_url)
        data = simulated_dataset(settings, sessions, "plastic-detector", root / "ds", size=SIZE,
                                 days=2, devices=6, per_day=60, end=END)
        spec = get_spec("plastic-detector", backbone="resnet18", input_size=SIZE)
        params = train_params(backbone="resnet18", image_size=SIZE, max_epochs=10, patience=10)
        outcome = train_model(spec, data, "strong", params, settings, {"git_commit": "test"})
        net = load_model(mlflow_client(settings), spec.name, outcome.model_version)
        yield SimpleNamespace(spec=spec, net=net.eval(), root=root, data=data, outcome=outcome,
                              settings=settings, sessions=sessions)
    get_settings.cache_clear()


def tensor(jpeg: bytes) -> torch.Tensor:
    img = Image.open(io.BytesIO(jpeg)).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255


def test_it_learns_far_above_chance_on_held_out_data(trained) -> None:
    report = report_for(trained.net, trained.data, trained.spec)
    assert report["overall"]["accuracy"] > 0.7, report["overall"]
    # severe scenes on a day of their own: the test split holds only a handful of them, so
    # its recall moves by 0.1 or more with one image
    severe = [o for o in simulate(days=1, devices=6, per_day=60, end=END + timedelta(days=1),
                                  seed=11) if o.labels["plastic-detector"] == "severe"]
    with torch.no_grad():
        answers = trained.net(torch.stack([tensor(o.image) for o in severe])).argmax(dim=1)
    recall = (answers == trained.spec.outputs.index("severe")).float().mean().item()
    assert len(severe) >= 40 and recall > 0.7, (len(severe), recall)


def test_more_debris_means_a_higher_severe_score(trained) -> None:
    """Same sea, same light, only the amount of debris differs."""
    params = SCENARIOS["normal"]
    scores = {}
    for level in ("none", "severe"):
        images = [tensor(render_image(np.random.default_rng(seed), params, debris_level=level,
                                      debris_type="bottle", algae=0, turbidity=2.0, hour=12))
                  for seed in range(40)]
        with torch.no_grad():
            probs = trained.net(torch.stack(images)).softmax(dim=1)
        scores[level] = probs[:, 2].mean().item()
    assert scores["severe"] > scores["none"] + 0.3, scores


def test_a_mirrored_scene_gets_the_same_answer(trained) -> None:
    obs = list(simulate(days=1, devices=4, per_day=20, end=END, seed=99))
    images = torch.stack([tensor(o.image) for o in obs])
    with torch.no_grad():
        same = trained.net(images).argmax(1) == trained.net(images.flip(-1)).argmax(1)
    assert same.float().mean() > 0.85


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


def test_refused_promoted_rolled_back_and_the_history_says_so(trained, tmp_path,
                                                              monkeypatch) -> None:
    settings, sessions, data, spec = trained.settings, trained.sessions, trained.data, trained.spec
    mlc = mlflow_client(settings)

    def train(key: str, epochs: int, lr: float, where=data) -> str:
        params = train_params(backbone="resnet18", image_size=SIZE, max_epochs=epochs,
                              patience=epochs, lr=lr)
        return train_model(spec, where, key, params, settings, {"git_commit": "e2e"}).model_version

    def gate(version: str, policy: PromotionPolicy = POLICY) -> PromotionResult:
        def judged(champion=None, current=True):
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
    strong = trained.outcome.model_version  # ten epochs, trained before the others
    promoted = gate(strong)
    assert promoted.promoted and "lower bound" in promoted.reason, promoted.reason
    assert promoted.decision["interval"]["lower_bound"] > POLICY.margin

    back = rollback(sessions, mlc, spec.name, None, "strong misfires on drones", "cli:test")
    assert (back["version"], back["previous_version"]) == (weak, strong)
    import mlflow.pytorch

    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)  # as a user would
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", settings.mlflow_tracking_uri)
    served = mlflow.pytorch.load_model(f"models:/{spec.name}@champion", map_location="cpu")
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
