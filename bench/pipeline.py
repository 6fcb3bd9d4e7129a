"""Prefect's overhead on the nightly pipeline: the same stages through the flow and as plain calls.

Both runs use the same simulated landing data, settings and params, each with its own fresh
home and DVC project. The Prefect run goes first (cold caches), so the ratio errs against
Prefect. Prints ``figure`` and ``ratio`` lines (see DESIGN.md, Benchmarks).

    .venv/bin/python bench/pipeline.py            # 2 000 observations
    .venv/bin/python bench/pipeline.py --quick    # 300 observations, 1 epoch
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
STAGES = ("ingest", "enrich", "build-dataset", "train", "evaluate", "drift", "promote")


def fresh_project(root: Path, landing: Path) -> None:
    """A home and a git+DVC project like a user's clone, sharing one landing folder."""
    (root / "project" / ".dvc").mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config", ".dvc/.gitignore"):
        shutil.copy(REPO / name, root / "project" / name)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=root / "project", check=True)
    subprocess.run([*git, "add", "."], cwd=root / "project", check=True)
    subprocess.run([*git, "commit", "-qm", "bench"], cwd=root / "project", check=True)
    os.environ["OCEANML_HOME"] = str(root / "home")
    os.environ["OCEANML_PROJECT_DIR"] = str(root / "project")
    os.environ["OCEANML_LANDING_URL"] = landing.as_uri()
    from oceanml.settings import get_settings

    get_settings.cache_clear()


def run_prefect(model: str, epochs: int) -> tuple[dict[str, float], float, float]:
    """The nightly flow; per-stage seconds from Prefect's own task-run records."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.nightly import nightly

    start = time.perf_counter()
    state = nightly(model=model, max_epochs=epochs, backbone="resnet18", return_state=True)
    total = time.perf_counter() - start
    state.result()
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    stages = {r.name.rsplit("-", 1)[0]: (r.end_time - r.start_time).total_seconds()
              for r in runs if r.end_time}  # task run names are "<task>-<suffix>"
    flow_seconds = (flow_run.end_time - flow_run.start_time).total_seconds()
    return stages, total, total - flow_seconds


def run_plain(model: str, epochs: int) -> tuple[dict[str, float], float]:
    """The same stage functions, called one after the other by hand."""
    from models.zoo import get_spec
    from oceanml.db import session_factory
    from oceanml.llm import make_provider
    from oceanml.registry import client as mlflow_client
    from oceanml.registry import set_champion
    from oceanml.settings import get_settings
    from tasks.dataset import build_dataset
    from tasks.drift import compute_drift, load_thresholds, recent_observations
    from tasks.enrich import enrich
    from tasks.evaluate import evaluate_versions
    from tasks.ingest import ingest
    from tasks.promote import decide_promotion, load_policy
    from tasks.train import TrainParams, train_model

    settings = get_settings()
    project = settings.project_dir.resolve()
    sessions = session_factory(settings.db_url)
    times: dict[str, float] = {}
    start = time.perf_counter()

    def timed(name, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        times[name] = time.perf_counter() - t0
        return out

    timed("ingest", ingest, settings, sessions)
    timed("enrich", enrich, sessions, make_provider(settings))
    ds = timed("build-dataset", build_dataset, settings, sessions, model)
    params = TrainParams.load(project / "params.yaml", model, max_epochs=epochs,
                              backbone="resnet18")
    spec = get_spec(model, backbone=params.backbone, input_size=params.image_size)
    trained = timed("train", train_model, spec, Path(ds.path), ds.version, params, settings,
                    {"git_commit": "bench"})
    evaluation = timed("evaluate", evaluate_versions, spec, Path(ds.path), settings,
                       trained.model_version, None)

    def drift():
        from oceanml.db import Dataset

        with sessions() as s:
            ref = s.query(Dataset).filter_by(version=ds.version).one().reference_stats
        since = datetime.now(UTC) - timedelta(days=settings.drift_window_days)
        return compute_drift(ref, recent_observations(sessions, since),
                             load_thresholds(project / "params.yaml"))

    timed("drift", drift)

    def promote():
        decision = decide_promotion(evaluation.challenger, None,
                                    load_policy(project / "params.yaml", model))
        if decision.promote:
            set_champion(mlflow_client(settings), model, trained.model_version)
        return decision

    timed("promote", promote)
    return times, time.perf_counter() - start


def warm_imports() -> None:
    """Import the heavy libraries once up front, so neither run pays the other's import cost."""
    import lightning  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import mlflow.pytorch  # noqa: F401
    import torchvision  # noqa: F401

    import flows.nightly  # noqa: F401
    import models.module  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 observations, 1 epoch")
    parser.add_argument("--observations", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=None, help="default: params.yaml")
    args = parser.parse_args()
    n = 300 if args.quick else args.observations
    epochs = 1 if args.quick else args.epochs
    devices, days = 8, 2
    per_day = max(1, n // (devices * days))

    from oceanml.simulator import simulate, write_landing
    from oceanml.store import filesystem

    warm_imports()

    with tempfile.TemporaryDirectory(prefix="oceanml-bench-") as tmp:
        root = Path(tmp)
        landing = root / "landing"
        write_landing(filesystem(landing.as_uri()),
                      simulate(days=days, devices=devices, per_day=per_day, seed=11), faults=True)
        print(f"figure observations {devices * days * per_day} count")

        fresh_project(root / "prefect", landing)
        prefect_stages, prefect_total, startup = run_prefect("plastic-detector", epochs)
        fresh_project(root / "plain", landing)
        plain_stages, plain_total = run_plain("plastic-detector", epochs)

    for stage in STAGES:
        print(f"figure prefect_{stage.replace('-', '_')}_s {prefect_stages.get(stage, float('nan')):.2f} s")
        print(f"figure plain_{stage.replace('-', '_')}_s {plain_stages.get(stage, float('nan')):.2f} s")
    print(f"figure prefect_total_s {prefect_total:.2f} s")
    print(f"figure prefect_api_startup_s {startup:.2f} s")
    print(f"figure plain_total_s {plain_total:.2f} s")
    print(f"ratio prefect_vs_plain {prefect_total / plain_total:.3f} goal <= 1.10")
    print(f"ratio prefect_vs_plain_warm_api {(prefect_total - startup) / plain_total:.3f} goal <= 1.10")


if __name__ == "__main__":
    main()
