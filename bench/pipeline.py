"""Prefect's overhead on the nightly pipeline: the flow against plain calls doing the same work.

The Prefect side runs the ``nightly`` flow for one model of the fleet (its branch subflow
included). The plain side calls the same stage bodies (each task's ``.fn``) one after the
other with the same arguments: ingest, enrich, dataset, train, evaluate (the champion too,
when there is one), promote, score, drift and the summary, with the same DB records, training
job, MLflow logging, Prefect artifacts and events. Artifacts and events are part of the work
on both sides, so the plain side talks to the same Prefect API for them; what it lacks is
only the orchestration (flow, subflow and task runs, states, result handling, the branch's
process).

Each side runs in a fresh process with the same imports done before its clock starts, on the
same simulated landing data, in a fresh home and DVC project of its own. The ratio is whole
wall time against whole wall time; nothing is subtracted from either side. Two API cases:

- ``ephemeral``: no server configured, as ``make demo`` runs. Both sides start Prefect's
  ephemeral API inside their clock (the flow at its first run, the plain side at its first
  artifact); its start-up alone, measured in a process of its own, is printed beside.
- ``server``: a ``prefect server`` already running on loopback (the deployment case), started
  before either clock and stopped after.

    .venv/bin/python bench/pipeline.py            # 2 000 observations
    .venv/bin/python bench/pipeline.py --quick    # 128 observations, 1 epoch, ephemeral only,
                                                  # no API start-up figure
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MODEL = "plastic-detector"
BACKBONE = "resnet18"
PROFILE = "cpu-small"
STAGES = ("ingest", "enrich", "build-dataset", "train", "evaluate", "promote", "score", "drift")


def fresh_project(root: Path) -> dict[str, str]:
    """A home and a git+DVC project like a user's clone; the environment that points at it."""
    project = root / "project"
    (project / ".dvc").mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config", ".dvc/.gitignore"):
        shutil.copy(REPO / name, project / name)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "add", "."], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "bench"], cwd=project, check=True)
    return {"OCEANML_HOME": str(root / "home"), "OCEANML_PROJECT_DIR": str(project)}


def warm_imports() -> None:
    """The heavy libraries, imported by both sides before their clocks start."""
    import lightning  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import mlflow.pytorch  # noqa: F401
    import torchvision  # noqa: F401

    import flows.nightly  # noqa: F401
    import models.module  # noqa: F401


def run_prefect(epochs: int | None) -> dict:
    """The nightly flow; per-stage seconds from Prefect's own task-run records."""
    warm_imports()
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    from flows.nightly import nightly

    start = time.perf_counter()
    state = nightly(models=[MODEL], profile=PROFILE, max_epochs=epochs, backbone=BACKBONE,
                    return_state=True)
    total = time.perf_counter() - start
    results = state.result()
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        branches = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])))
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[run_id, *(b.id for b in branches)])))
    stages = {r.name.rsplit("-", 1)[0]: (r.end_time - r.start_time).total_seconds()
              for r in runs if r.end_time}  # task run names are "<task>-<suffix>"
    return {"total": total, "stages": stages,
            "promoted": results.models[MODEL].promote.promoted}


def run_plain(epochs: int | None) -> dict:
    """The same stage bodies, called one after the other as the flow orders them."""
    warm_imports()
    from core.database import session_factory
    from core.jobs import queue_job
    from core.params import load_params, profile_description
    from core.settings import get_settings
    from tasks.dataset import build_dataset_task
    from tasks.drift import drift_task
    from tasks.enrich import enrich_task
    from tasks.evaluate import evaluate_task
    from tasks.ingest import ingest_task
    from tasks.promote import promote_task
    from tasks.results import BranchResult, FleetResult
    from tasks.score import distribution_task, score_task
    from tasks.summary import summary_task
    from tasks.train import train_task

    stages: dict[str, float] = {}

    def timed(name, task, *args, **kwargs):
        t0 = time.perf_counter()
        out = task.fn(*args, **kwargs)
        stages[name] = time.perf_counter() - t0
        return out

    start = time.perf_counter()
    ingest, enrich = timed("ingest", ingest_task), timed("enrich", enrich_task)
    dataset = timed("build-dataset", build_dataset_task, MODEL, profile=PROFILE)
    job_id = queue_job(session_factory(get_settings().db_url), MODEL, dataset.version,
                       "nightly", epochs)
    train = timed("train", train_task, MODEL, dataset.version, max_epochs=epochs,
                  backbone=BACKBONE, profile=PROFILE, job_id=job_id)
    evaluation = timed("evaluate", evaluate_task, MODEL, dataset.version, train.model_version)
    promotion = timed("promote", promote_task, MODEL, evaluation)
    scored = timed("score", score_task, MODEL)
    drift = timed("drift", drift_task, MODEL, dataset.version)
    if scored.version:
        distribution_task.fn({MODEL: scored.version})
    profile = profile_description(load_params(get_settings().project_dir.resolve(), PROFILE),
                                  PROFILE)
    branch = BranchResult(dataset, train, evaluation, promotion, scored, drift)
    print(summary_task.fn(FleetResult(ingest, enrich, {MODEL: branch}, profile)))
    return {"total": time.perf_counter() - start, "stages": stages,
            "promoted": promotion.promoted}


def api_startup() -> dict:
    """The ephemeral API's start-up alone: a fresh process's first call to it."""
    from prefect.client.orchestration import get_client

    start = time.perf_counter()
    with get_client(sync_client=True) as client:
        client.hello()
    return {"total": time.perf_counter() - start}


def environment(changes: dict[str, str | None]) -> dict[str, str]:
    """This process's environment with ``changes`` (``None`` removes a variable)."""
    env = dict(os.environ)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def child(side: str, env: dict[str, str | None], epochs: int | None) -> dict:
    """Run one side in a fresh process; its JSON result."""
    args = [sys.executable, __file__, "--side", side]
    if epochs is not None:
        args += ["--epochs", str(epochs)]
    proc = subprocess.run(args, env=environment(env), cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} side failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """``prefect server start`` on loopback with a home of its own; its API URL."""
    port = free_port()
    env = environment({"PREFECT_HOME": str(home), "PREFECT_API_URL": None})
    log = open(home.parent / "prefect-server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
         "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start; see {log.name}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def compare(tag: str, root: Path, landing: Path, base_env: dict[str, str | None],
            epochs: int | None) -> None:
    """Both sides in fresh projects over the same landing data; the plain side first, so any
    cache the first run warms favours the flow (the side under test errs against itself
    no less than against the peer)."""
    results = {}
    for side in ("plain", "prefect"):
        env = {**base_env, **fresh_project(root / f"{tag}-{side}"),
               "OCEANML_LANDING_URL": landing.as_uri(),
               "PREFECT_HOME": str(root / f"{tag}-{side}" / "prefect-home")}
        results[side] = child(side, env, epochs)
    for stage in STAGES:
        key = stage.replace("-", "_")
        for side in ("prefect", "plain"):
            print(f"figure {tag}_{side}_{key}_s "
                  f"{results[side]['stages'].get(stage, float('nan')):.2f} s")
    for side in ("prefect", "plain"):
        print(f"figure {tag}_{side}_total_s {results[side]['total']:.2f} s")
        print(f"figure {tag}_{side}_promoted {int(results[side]['promoted'])} bool")
    print(f"ratio {tag}_prefect_vs_plain {results['prefect']['total'] / results['plain']['total']:.3f}"
          " goal <= 1.10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 observations, 1 epoch, the ephemeral case only, no API start-up figure")
    parser.add_argument("--observations", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=None, help="default: params.yaml")
    parser.add_argument("--side", choices=("prefect", "plain", "api-startup"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        run = {"prefect": lambda: run_prefect(args.epochs), "plain": lambda: run_plain(args.epochs),
               "api-startup": api_startup}[args.side]
        print(json.dumps(run()))
        return
    n = 128 if args.quick else args.observations
    epochs = 1 if args.quick else args.epochs
    devices, days = 8, 2
    per_day = max(1, n // (devices * days))

    from core.store import filesystem
    from oceanml.simulator import simulate, write_landing

    with tempfile.TemporaryDirectory(prefix="oceanml-bench-") as tmp:
        root = Path(tmp)
        landing = root / "landing"
        write_landing(filesystem(landing.as_uri()),
                      simulate(days=days, devices=devices, per_day=per_day, seed=11), faults=True)
        print(f"figure observations {devices * days * per_day} count")

        ephemeral: dict[str, str | None] = {"PREFECT_API_URL": None}
        if not args.quick:  # a figure of Prefect's own start, no code of ours to guard
            startup = child("api-startup", {**ephemeral,
                                            "PREFECT_HOME": str(root / "startup-home")},
                            None)["total"]
            print(f"figure ephemeral_api_startup_s {startup:.2f} s")
        compare("ephemeral", root, landing, ephemeral, epochs)

        if args.quick:  # a guard that the script runs: the server case is the same code
            return      # on another API, and costs a server start and two more pipelines
        (root / "server-home").mkdir()
        with prefect_server(root / "server-home") as url:
            compare("server", root, landing, {"PREFECT_API_URL": url}, epochs)


if __name__ == "__main__":
    main()
