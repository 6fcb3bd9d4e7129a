"""The nightly flow end to end on a tiny simulated batch under Prefect's harness: two models
of the fleet (a classifier and the regression model) side by side, run twice; then a night
with a broken model whose branch fails alone, and one where a new model's data loader stalls
and another's DVC push hangs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from sqlalchemy import func, select

from core.database import session_factory
from core.db import Dataset, Observation, Reject
from core.jobs import list_jobs
from core.records import Promotion, TrainingJob, TrainingRun
from core.registry import CHAMPION, alias_version
from core.registry import client as mlflow_client
from core.settings import get_settings
from core.store import filesystem
from models.zoo import get_spec
from oceanml.simulator import simulate, write_landing
from tasks.dataset import dataset_dir, stage_name
from tests.conftest import make_project
from tests.deployed import alive
from tests.hung_dvc import hang_pushes, hung_pushes

pytestmark = pytest.mark.slow
MODEL = "plastic-detector"
REGRESSION = "water-quality"
FLEET = [MODEL, REGRESSION]
# five epochs: at three, the champion's promotion depended on the day (the fixture simulates up
# to today; macro F1 0.45 against the prior predictor's 0.42 on 2026-12-07, not promoted)
EPOCHS = 5
FAULT_REASONS = {"image_truncated": 1, "sidecar_not_json": 1, "schema": 1, "missing_sidecar": 1,
                 "duplicate": 1, "out_of_range": 1}


def digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


@pytest.fixture(scope="module")
def runs(prefect_harness, tmp_path_factory):
    """Simulate a small batch, then run the nightly flow twice; tests assert on what it left."""
    from flows.nightly import nightly

    root = tmp_path_factory.mktemp("nightly")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OCEANML_HOME", str(root / "home"))
        mp.setenv("OCEANML_PROJECT_DIR", str(root / "project"))
        get_settings.cache_clear()
        settings = get_settings()
        make_project(root / "project", {"promote": {"floor": 0.0}})
        # enough labelled images for a champion that beats the trivial predictors with confidence
        stream = simulate(days=2, devices=4, per_day=60, seed=5, annotated_fraction=0.9)
        write_landing(filesystem(settings.landing_url), stream, faults=True)
        first_state = nightly(models=FLEET, profile="cpu-small", max_epochs=EPOCHS,
                              return_state=True)
        first = first_state.result()
        second = nightly(models=FLEET, profile="cpu-small", max_epochs=EPOCHS)
        flow_run_id = str(first_state.state_details.flow_run_id)
        yield SimpleNamespace(settings=settings, first=first.models[MODEL],
                              second=second.models[MODEL], shared=(first, second),
                              fleet=first.models, flow_run_id=flow_run_id,
                              branch_run_id=branch_runs(flow_run_id)[MODEL],
                              sessions=session_factory(settings.db_url), project=root / "project")
    get_settings.cache_clear()


def branch_runs(nightly_run_id: str) -> dict[str, str]:
    """The ids of a nightly run's model-branch subflow runs, by model (their run names)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[UUID(nightly_run_id)])))
    return {run.name: str(run.id) for run in runs}


def test_each_model_ran_as_its_own_branch_of_the_nightly(runs) -> None:
    assert set(branch_runs(runs.flow_run_id)) == set(FLEET)
    assert set(runs.fleet) == set(FLEET) and not runs.shared[0].failed()
    first, _ = runs.shared
    assert first.profile.startswith("cpu-small (")


def test_the_db_holds_the_observations_and_the_rejects_with_reasons(runs) -> None:
    with runs.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Observation)) == 2 * 4 * 60
        reasons = Counter(s.scalars(select(Reject.reason)).all())
        enriched = s.scalar(select(func.count()).select_from(Observation)
                            .where(Observation.llm_tags.is_not(None)))
    assert dict(reasons) == FAULT_REASONS
    assert enriched == 2 * 4 * 60
    first, _ = runs.shared
    assert first.ingest.ingested == 480 and first.ingest.rejected == 6


def test_the_registry_holds_a_champion_with_lineage_tags(runs) -> None:
    champion = alias_version(mlflow_client(runs.settings), MODEL, CHAMPION)
    assert champion is not None
    assert str(champion.version) == runs.first.train.model_version
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=runs.project, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert champion.tags["dataset_version"] == runs.first.dataset.version
    assert champion.tags["git_commit"] == head
    assert champion.tags["profile"] == "cpu-small"
    assert champion.tags["prefect_flow_run_id"] == runs.branch_run_id
    assert champion.tags["promotion"] == "promoted"
    with runs.sessions() as s:
        promotion = s.scalar(select(Promotion).where(Promotion.model_name == MODEL))
        dataset = s.scalar(select(Dataset).where(Dataset.name == MODEL))
    assert promotion.promoted and promotion.flow_run_id == runs.branch_run_id
    assert dataset.version == champion.tags["dataset_version"]
    assert dataset.reference_stats["numeric"]


def test_dvc_restores_the_dataset_version_from_its_remote(runs) -> None:
    from tasks.dataset import dataset_dir, local_dataset

    version = runs.first.dataset.version
    workspace = dataset_dir(runs.settings, MODEL)
    before = digests(workspace)
    shutil.rmtree(workspace)
    shutil.rmtree(runs.project / ".dvc" / "cache")  # only the remote holds the bytes now
    restored = local_dataset(runs.settings, MODEL, version)
    assert restored != workspace and digests(restored) == before


def test_a_second_run_adds_nothing(runs) -> None:
    second = runs.second
    _, shared = runs.shared
    assert shared.ingest.ingested == 0 and shared.ingest.rejected == 0
    assert shared.enrich.enriched == 0 and shared.enrich.requests == 0
    assert not second.dataset.created
    assert second.dataset.version == runs.first.dataset.version
    assert second.train.reused
    assert second.train.model_version == runs.first.train.model_version
    assert not second.promote.decided_now
    versions = mlflow_client(runs.settings).search_model_versions(f"name = '{MODEL}'")
    assert len(versions) == 1
    with runs.sessions() as s:
        for table in (Dataset, TrainingRun, Promotion):  # one per model of the fleet
            assert s.scalar(select(func.count()).select_from(table)) == len(FLEET)
        assert s.scalar(select(func.count()).select_from(Reject)) == 6
        jobs = s.execute(select(TrainingJob.model_name, TrainingJob.status, TrainingJob.reused)
                         .order_by(TrainingJob.id)).all()
    # every training is a job, the second night's reused the first night's versions
    assert sorted(jobs) == sorted([(m, "completed", reused) for m in FLEET
                                   for reused in (False, True)])


def printed_summary(flow_run_id: str) -> str:
    """The summary the nightly printed, as its ``nightly-summary`` artifact holds it."""
    return run_artifact(flow_run_id, "nightly-summary").data


def run_artifact(flow_run_id: str, key: str):
    """The artifact ``key`` that the flow run made."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)])))
    return artifact


def test_the_summary_tells_each_stages_outcome(runs) -> None:
    from tasks.summary import branch_rows, fleet_row, shared_rows

    text = printed_summary(runs.flow_run_id)
    shared_first, shared_second = (dict(shared_rows(r)) for r in runs.shared)
    first = dict(branch_rows(MODEL, runs.first))
    for stage, outcome in [*shared_first.items(), *first.items()]:
        assert f"| {stage} | {outcome} |" in text
    for model, branch in runs.fleet.items():
        assert "| " + " | ".join(fleet_row(model, branch)) + " |" in text
    assert "Profile: cpu-small (" in text
    version = runs.first.train.model_version
    reasons = ", ".join(f"{k}: 1" for k in sorted(FAULT_REASONS))
    assert shared_first["ingest"].startswith(f"480 new observations, 6 rejected ({reasons})")
    assert shared_first["enrich"].startswith("480 enriched by heuristic/")
    assert first["dataset"].startswith(f"`{runs.first.dataset.version}` new version")
    assert first["train"] == f"{MODEL} v{version} (new)"
    assert first["evaluate"].startswith("test accuracy ")
    assert first["evaluate"].endswith("; champion none")
    assert "features drifted" in first["drift"]  # against the new champion's dataset
    assert first["promote"].startswith("PROMOTED - no champion yet; macro_f1 ")

    second = dict(branch_rows(MODEL, runs.second))
    assert shared_second["ingest"].startswith("0 new observations, 0 rejected (none)")
    assert shared_second["ingest"].endswith(" - nothing new")
    assert shared_second["enrich"].startswith("0 enriched") and shared_second["enrich"].endswith(
        " - nothing to do")
    assert "unchanged: no new version" in second["dataset"]
    assert second["train"] == f"{MODEL} v{version} (already trained on this data and params: " \
                              "reused)"
    assert f"; champion v{version}" in second["evaluate"]
    assert "features drifted" in second["drift"]
    assert second["promote"] == (f"not promoted - v{version} is already the champion "
                                 "(no new decision)")
    with runs.sessions() as s:
        with_image = s.scalar(select(func.count()).where(Observation.image_key.is_not(None)))
    assert first["score"] == f"v{version} scored {with_image} observations over 2 days"
    assert second["score"] == f"v{version} scored 0 observations - nothing left to score"


def test_the_champion_scored_every_observation_once(runs) -> None:
    from core.db import Prediction

    version = runs.first.train.model_version
    with runs.sessions() as s:
        rows = s.execute(select(Prediction.model_version, Prediction.flow_run_id,
                                func.count()).where(Prediction.model_name == MODEL)
                         .group_by(Prediction.model_version, Prediction.flow_run_id)).all()
        with_image = s.scalar(select(func.count()).where(Observation.image_key.is_not(None)))
        labels = dict(s.execute(select(Prediction.label, func.count())
                                .where(Prediction.model_name == MODEL)
                                .group_by(Prediction.label)).all())
    assert with_image > 0
    assert rows == [(version, runs.branch_run_id, with_image)]  # all by the first night
    table = json.loads(run_artifact(runs.flow_run_id, "score-distribution").data)
    assert {r["class"]: r["count"] for r in table if r["model"] == MODEL} == labels
    progress = run_artifact(runs.branch_run_id, f"score-{MODEL}-progress")
    assert progress.type == "progress" and float(progress.data) == 100.0
    training = run_artifact(runs.branch_run_id, f"train-{MODEL}-progress")
    assert training.type == "progress" and float(training.data) == 100.0


def test_a_retrain_reuses_what_the_night_made_and_its_cooldown_counts_from_it(runs) -> None:
    from flows.retrain import retrain

    first = retrain(model=MODEL, reason="drift", cooldown_hours=6, max_epochs=EPOCHS)
    assert not first.skipped  # a nightly training is no retrain: nothing to cool down from
    # no profile given: the champion's (its tag), so the same training key, reused
    assert first.dataset.version == runs.first.dataset.version
    assert first.train.reused and not first.promote.decided_now
    storm = retrain(model=MODEL, reason="drift again", cooldown_hours=6)
    assert storm.skipped and storm.recent.job_id == first.job_id
    assert storm.recent.model_version == runs.first.train.model_version
    versions = mlflow_client(runs.settings).search_model_versions(f"name = '{MODEL}'")
    assert len(versions) == 1


def test_the_regression_model_ran_end_to_end_beside_the_classifier(runs) -> None:
    """water-quality: four indices in [0, 1], judged on MAE, lower is better."""
    out = runs.fleet[REGRESSION]
    assert out.dataset.created and not out.train.reused
    assert out.dataset.version != runs.first.dataset.version
    overall = out.evaluate.challenger["overall"]
    assert 0 <= overall["mae"] <= 1 and "per_target" in out.evaluate.challenger
    checks = {c["name"]: c for c in out.promote.decision["checks"]}
    assert checks["floor"]["detail"].startswith(f"mae {overall['mae']:.3f}")  # judged on MAE
    assert {f"r2 {t}" for t in get_spec(REGRESSION).outputs} <= set(checks)  # every target
    versions = mlflow_client(runs.settings).search_model_versions(f"name = '{REGRESSION}'")
    assert len(versions) == 1


def test_a_broken_model_fails_its_branch_alone_and_the_night_by_name(runs) -> None:
    from flows.nightly import nightly

    params_file = runs.project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["datasets"]["debris-classifier"]["selection"] = {"devices": ["no-such-device-*"]}
    params_file.write_text(yaml.safe_dump(params))
    try:
        state = nightly(models=[MODEL, "debris-classifier"], profile="cpu-small", max_epochs=EPOCHS,
                        return_state=True)
    finally:
        params_file.write_text(original)
    assert state.is_failed()
    assert state.message.endswith("1 of 2 model branches failed: debris-classifier: "
                                  "ValueError: no observation "
                                  "selected for 'debris-classifier' ({'devices': 480}): ingest "
                                  "labelled data, or widen datasets.debris-classifier.selection "
                                  "in params.yaml")
    text = printed_summary(str(state.state_details.flow_run_id))
    assert "# OceanML nightly: 2 models, 1 FAILED (debris-classifier)" in text
    assert "| debris-classifier | FAILED: ValueError: no observation selected" in text
    assert f"| {MODEL} | completed | `{runs.first.dataset.version[:8]}` unchanged |" in text


# -- a training whose data loader stalls --------------------------------------------------------

STALLED = "algae-bloom"
HUNG = "debris-classifier"
LOADER_TIMEOUT_S = 10
DVC_TIMEOUT_S = 30  # above any build of this module's datasets, on a busy CI machine
RETRY_DELAY_S = 1  # OCEANML_STAGE_RETRY_DELAYS: the tasks' own delays would only be waited


def descendants() -> dict[int, int]:
    """This process's descendants, each with its parent."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # it exited between the listing and the read
    mine, frontier = {}, {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier}
        mine |= {pid: parents[pid] for pid in frontier}
    return mine


def loader_workers() -> set[int]:
    """The training's loader workers under this process: the children of a fork server that
    preloads ``models.datamodule`` alone (:func:`models.datamodule.worker_context`; the fleet's
    own fork server, whose children are the branches, preloads more)."""
    found = set()
    for pid, parent in descendants().items():
        with contextlib.suppress(OSError):
            server = Path(f"/proc/{parent}/cmdline").read_bytes()
            if b"forkserver" in server and b"['models.datamodule']" in server:
                found.add(pid)
    return found


class ShardStall(threading.Thread):
    """Each time a training of ``STALLED`` starts its loader workers (its setup has read the
    shards' metadata by then), its train shards become FIFOs nobody writes: a worker's open()
    of one blocks in the kernel, as a read of a hung disk or share does. Once that training
    has failed they are put back (renamed, never rewritten: DVC's cache may share their
    inodes), so the next attempt sets up as usual and stalls the same way."""

    def __init__(self, sessions, root: Path) -> None:
        super().__init__(daemon=True)
        self.sessions, self.root = sessions, root
        self.seen: set[int] = set()
        self.held: list[Path] = []
        self.stalls: list[float] = []  # when each attempt stalled (monotonic)
        self.done = threading.Event()

    def failed(self) -> bool:
        with self.sessions() as s:
            return s.scalar(select(TrainingJob.status).where(
                TrainingJob.model_name == STALLED)) == "failed"

    def run(self) -> None:
        while not self.done.wait(0.1):
            if self.held:
                if self.failed():
                    self.put_back()
                continue
            started = loader_workers() - self.seen
            self.seen |= started
            if started and not self.failed():
                for shard in sorted(self.root.glob("train-*.parquet")):
                    shard.rename(shard.with_name(shard.name + ".held"))
                    os.mkfifo(shard)
                    self.held.append(shard)
                self.stalls.append(time.monotonic())

    def put_back(self) -> None:
        for shard in self.held:
            shard.unlink()
            shard.with_name(shard.name + ".held").rename(shard)
        self.held = []

    def __enter__(self) -> ShardStall:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()
        self.put_back()


def test_a_stalled_data_loader_and_a_hung_dvc_push_fail_their_branches_by_name_and_the_next_night_completes(
        runs, tmp_path, monkeypatch) -> None:
    """Two new models of the fleet stall, each its own way, beside one that completes:
    - ``STALLED`` trains with a loader worker whose read of its train shards never returns:
      each attempt of its training fails after OCEANML_TRAIN_LOADER_TIMEOUT_S without a batch;
    - ``HUNG``'s dataset builds, then its ``dvc push`` never returns: each attempt of its
      build is stopped at OCEANML_DVC_TIMEOUT_S (and frees the project lock the other
      branches' builds wait on).
    Both branches fail by name, the third completes, and the night ends Failed saying why.
    The next night, with nothing stalled, trains both and completes; what the nights stored
    before is all there, once."""
    from flows.nightly import nightly

    def stored() -> dict[str, int]:
        with runs.sessions() as s:
            found = {t.__tablename__: s.scalar(select(func.count()).select_from(t))
                     for t in (Observation, Reject)}
            for table, model in ((Dataset, Dataset.name), (Promotion, Promotion.model_name)):
                found[table.__tablename__] = s.scalar(select(func.count()).select_from(table)
                                                      .where(model.not_in([STALLED, HUNG])))
        found["versions"] = len(mlflow_client(runs.settings).search_model_versions(
            f"name = '{MODEL}'"))
        return found

    before = stored()
    shim = tmp_path / "hung-push"
    python_path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", hang_pushes(shim, stage_name(HUNG)), prepend=os.pathsep)
    monkeypatch.setenv("OCEANML_DVC_TIMEOUT_S", str(DVC_TIMEOUT_S))
    monkeypatch.setenv("OCEANML_TRAIN_NUM_WORKERS", "1")
    monkeypatch.setenv("OCEANML_TRAIN_LOADER_TIMEOUT_S", str(LOADER_TIMEOUT_S))
    monkeypatch.setenv("OCEANML_STAGE_RETRY_DELAYS", json.dumps(
        {"train": RETRY_DELAY_S, "build-dataset": RETRY_DELAY_S}))  # not the tasks' 30 and 10 s
    get_settings.cache_clear()
    start = time.monotonic()
    with ShardStall(runs.sessions, dataset_dir(runs.settings, STALLED)) as stall:
        state = nightly(models=[MODEL, STALLED, HUNG], profile="cpu-small", max_epochs=EPOCHS,
                        return_state=True)
    took = time.monotonic() - start
    assert len(stall.stalls) == 2  # both attempts of the training (the task retries once)
    # the retry waited the setting's second, not the task's own 30 s
    assert stall.stalls[1] - stall.stalls[0] < LOADER_TIMEOUT_S + 30, stall.stalls
    pushes = hung_pushes(shim)
    assert len(pushes) == 2, pushes  # both attempts of the build, each pushed once
    assert not any(alive(pid) for pid in pushes)  # stopped, not left behind
    stalled = (f"{STALLED}: LoaderStalled: the data loader delivered no batch for "
               f"{LOADER_TIMEOUT_S} s (OCEANML_TRAIN_LOADER_TIMEOUT_S)")
    hung = (f"{HUNG}: DvcTimeout: dvc push {stage_name(HUNG)} did not finish within "
            f"{DVC_TIMEOUT_S} s and was stopped (OCEANML_DVC_TIMEOUT_S)")
    assert state.is_failed()
    assert f"2 of 3 model branches failed: {stalled}" in state.message, state.message
    assert state.message.endswith(f"; {hung}"), state.message
    assert took < 300, took  # two attempts each, not a held night
    text = printed_summary(str(state.state_details.flow_run_id))
    assert f"# OceanML nightly: 3 models, 2 FAILED ({STALLED}, {HUNG})" in text
    assert f"| {MODEL} | completed |" in text
    [job] = list_jobs(runs.sessions, STALLED)
    assert job.status == "failed" and "LoaderStalled" in job.error, job.error
    assert not list_jobs(runs.sessions, HUNG)  # its branch never reached a training
    for model in (STALLED, HUNG):
        assert not mlflow_client(runs.settings).search_model_versions(f"name = '{model}'")

    for name in ("OCEANML_TRAIN_NUM_WORKERS", "OCEANML_DVC_TIMEOUT_S"):
        monkeypatch.delenv(name)
    if python_path is None:
        monkeypatch.delenv("PYTHONPATH")
    else:
        monkeypatch.setenv("PYTHONPATH", python_path)
    get_settings.cache_clear()
    after = nightly(models=[STALLED, HUNG], profile="cpu-small", max_epochs=1,
                    return_state=True)
    assert after.is_completed(), after.message
    assert stored() == before  # nothing lost, nothing stored twice
    with runs.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Dataset).where(
            Dataset.name == STALLED)) == 1  # the stalled night's version, not a second one
        assert s.scalar(select(func.count()).select_from(Dataset).where(
            Dataset.name == HUNG)) == 1  # recorded once its push went through
    assert [j.status for j in list_jobs(runs.sessions, STALLED)] == ["completed", "failed"]
    assert [j.status for j in list_jobs(runs.sessions, HUNG)] == ["completed"]
    for model in (STALLED, HUNG):
        assert len(mlflow_client(runs.settings).search_model_versions(
            f"name = '{model}'")) == 1
