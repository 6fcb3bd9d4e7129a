"""The lifecycle on the production stack `.ci/stack.py` starts: PostgreSQL, S3 (moto's server),
an MLflow tracking server (PostgreSQL backend, artifacts proxied to S3), a Prefect server on
PostgreSQL and a process worker configured by environment, with sentinel credentials in every
URL and key. prefect.yaml is deployed with the real CLI; the worker runs the nightly for a
fleet of two, the same nightly again, then the monitor over two storm days, whose drift event
starts the retrain deployment. The tests assert where everything went, that the second night
added nothing, that no credential was written or printed anywhere, and what the Prefect UI
shows an operator in headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
from sqlalchemy import func, select

from core.database import session_factory
from core.db import Dataset, EnrichmentCache, Observation, Prediction, Reject
from core.params import read_params
from core.records import (
    DecisionRecord,
    DriftRecord,
    Evaluation,
    Promotion,
    TrainingJob,
    TrainingRun,
)
from core.registry import CHAMPION, alias_version
from core.registry import client as mlflow_client
from core.settings import Settings, get_settings
from tests.conftest import file_digests, make_project
from tests.deployed import (
    REPO,
    deployment_runs,
    land,
    prefect,
    set_default_parameters,
    unschedule,
    wait_for_final_runs,
    wait_until,
)

# the lifecycle fixture runs two nightlies, a monitor and its retrains on the worker before the
# first test: each run has its own bound (RUN_TIMEOUT_S), the whole needs more than pytest's 900 s
pytestmark = [pytest.mark.integration, pytest.mark.stack, pytest.mark.slow,
              pytest.mark.timeout(2400)]
FLEET = ["plastic-detector", "algae-bloom"]
BUCKETS = ("oceanml-landing", "oceanml-lake", "oceanml-dvc", "oceanml-mlflow")
TABLES = (Observation, Reject, EnrichmentCache, Dataset, TrainingRun, Evaluation, Promotion,
          Prediction)
RUN_TIMEOUT_S = 900
RETRAIN_EPOCHS = 1  # what the drift trigger starts is under test, not what it trains
# the restarted nights: both branches train at once, and the second restart needs the other
# model still training after the first restart (else a new night is landed and run)
RESTART_EPOCHS = 2


@dataclass
class Lifecycle:
    settings: Settings
    sessions: object
    scheduled: list  # the nightly's runs the scheduler made from the cron
    first: object  # the nightly flow runs, the monitor's, the retrains
    second: object
    monitor: object
    retrains: list
    drifted: list[str]
    after_first: dict[str, int]
    after_second: dict[str, int]
    first_datasets: dict[str, str]  # the dataset version each model trained on first


def counts(sessions, settings: Settings) -> dict[str, int]:
    """Rows of every table the nightly writes, and model versions in the registry."""
    with sessions() as s:
        found = {t.__tablename__: s.scalar(select(func.count()).select_from(t)) for t in TABLES}
    mlc = mlflow_client(settings)
    found["model_versions"] = sum(len(mlc.search_model_versions(f"name = '{m}'")) for m in FLEET)
    return found


def run(name: str, stack, **parameters):
    """Deployment ``name`` run by the stack's worker; fails with the worker's log if not done."""
    flow_run = run_deployment(name, parameters=parameters, timeout=RUN_TIMEOUT_S, poll_interval=2)
    if not flow_run.state.is_completed():
        pytest.fail(f"{name} ended {flow_run.state.name}: {flow_run.state.message}\n"
                    f"{stack.worker_log.read_text(errors='replace')[-6000:]}")
    return flow_run


def deploy_all(stack, env: dict[str, str]) -> list:
    """prefect.yaml as an operator deploys it; the nightly's runs the server's scheduler
    made from its cron; then the schedules removed (the test says when flows run)."""
    created = prefect("work-pool", "create", "oceanml-gpu", "--type", "process", env=env)
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = subprocess.run([str(REPO / ".venv/bin/oceanml"), "deploy"], cwd=REPO, env=env,
                              capture_output=True, text=True)  # prefect deploy --all, and more
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "automation  oceanml: nightly deadline" in deployed.stdout, deployed.stdout
    scheduled = wait_until("the scheduler's runs of the nightly", lambda: [
        r for r in deployment_runs("nightly/nightly") if r.auto_scheduled], 150)
    unschedule("nightly/nightly", "monitor/monitor", "score/score", "release-check/release-check")
    # the retrains train one epoch, not the lifecycle nightly's three (a third of its time
    # went to them at five)
    set_default_parameters("retrain/retrain", max_epochs=RETRAIN_EPOCHS)
    return scheduled


class Stopwatch:
    """Writes how long each phase of the lifecycle took to a log CI keeps (the fixture is a
    third of the suite's time: where it goes is worth reading)."""

    def __init__(self, path: Path) -> None:
        self.path, self.last = path, time.monotonic()

    def __call__(self, phase: str) -> None:
        now = time.monotonic()
        with self.path.open("a") as log:
            log.write(f"{datetime.now(UTC):%H:%M:%S} {phase}: {now - self.last:.0f} s\n")
        self.last = now


@pytest.fixture(scope="module")
def lifecycle(stack) -> Iterator[Lifecycle]:
    with pytest.MonkeyPatch.context() as mp, \
            temporary_settings(updates={PREFECT_API_URL: stack.urls["prefect"],
                                        PREFECT_API_AUTH_STRING: stack.prefect_auth}):
        for name, value in stack.env.items():
            mp.setenv(name, value)
        get_settings.cache_clear()
        settings = get_settings()
        if settings.project_dir.exists():
            pytest.fail(f"this stack ran the lifecycle already ({settings.project_dir}): "
                        "start a new one")
        profiles = read_params(REPO)["profiles"]
        # three epochs: macro F1 0.85 and 0.95 after five, against the prior predictor's 0.39
        # and 0.23; the champions need only beat it
        profiles["cpu-small"]["train"]["max_epochs"] = 3
        make_project(settings.project_dir, {"promote": {"floor": 0.0}, "profiles": profiles,
                                            "fleet": FLEET})
        took = Stopwatch(stack.dir / "lifecycle.log")
        scheduled = deploy_all(stack, {**os.environ})
        took("deployed")
        sessions = session_factory(settings.db_url)
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        land(settings, days=3, end=today - timedelta(days=2), scenario="normal", seed=1)
        took("landed 3 days")
        first = run("nightly/nightly", stack)
        took("first nightly")
        after_first = counts(sessions, settings)
        with sessions() as s:
            first_datasets = dict(s.execute(select(Dataset.name, Dataset.version)).all())
        second = run("nightly/nightly", stack)
        took("second nightly")
        after_second = counts(sessions, settings)
        land(settings, days=2, end=today, scenario="storm", seed=2)
        took("landed a storm")
        monitor = run("monitor/monitor", stack)
        took("monitor")
        with sessions() as s:
            verdicts = dict(s.execute(select(DriftRecord.model_name, DriftRecord.verdict)
                                      .order_by(DriftRecord.id)).all())  # the latest per model
        drifted = sorted(m for m, v in verdicts.items() if v == "drift")
        retrains = wait_for_final_runs("retrain/retrain", len(drifted), RUN_TIMEOUT_S)
        took(f"retrains of {drifted}")
        yield Lifecycle(settings, sessions, scheduled, first, second, monitor, retrains, drifted,
                        after_first, after_second, first_datasets)
    get_settings.cache_clear()


def test_the_server_schedules_the_nightly_from_its_cron(lifecycle) -> None:
    starts = [r.expected_start_time for r in lifecycle.scheduled]
    assert starts and all((t.hour, t.minute) == (2, 0) for t in starts), starts


def test_the_fleet_state_is_in_postgresql(lifecycle) -> None:
    with lifecycle.sessions() as s:
        assert s.get_bind().dialect.name == "postgresql"
        assert s.scalar(select(func.count()).select_from(Observation)) >= 5 * 4 * 60  # + storm
        jobs = s.execute(select(TrainingJob.model_name, TrainingJob.status)).all()
        champions = s.scalars(select(DecisionRecord.model_name)
                              .where(DecisionRecord.promoted)).all()
        scored = s.scalars(select(Prediction.model_name).distinct()).all()
        models = {t.__tablename__: set(s.scalars(select(column)).all())
                  for t, column in ((Dataset, Dataset.name), (Evaluation, Evaluation.model_name),
                                    (Promotion, Promotion.model_name))}
    assert {m for m, status in jobs if status == "completed"} == set(FLEET)
    assert all(status == "completed" for _, status in jobs), jobs
    assert set(champions) == set(FLEET) and set(scored) == set(FLEET)
    assert all(found == set(FLEET) for found in models.values()), models


def s3_keys(stack, bucket: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=stack.urls["s3"], region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_landing_lake_and_dvc_remote_are_on_s3(lifecycle, stack) -> None:
    settings = lifecycle.settings
    with lifecycle.sessions() as s:
        image_keys = set(s.scalars(select(Observation.image_key)))
    lake = {k.removeprefix("lake/") for k in s3_keys(stack, "oceanml-lake")}
    assert image_keys and image_keys <= lake
    assert len(s3_keys(stack, "oceanml-landing")) >= 2 * len(image_keys)  # images + sidecars
    assert s3_keys(stack, "oceanml-dvc")
    for local in ("lake", "landing", "dvc-remote", "mlartifacts", "mlflow.db", "oceanml.db"):
        assert not (settings.home / local).exists(), f"{local} written on the worker's disk"


def test_models_and_their_artifacts_are_in_the_mlflow_server(lifecycle, stack) -> None:
    mlc = mlflow_client(lifecycle.settings)
    for model in FLEET:
        champion = alias_version(mlc, model, CHAMPION)
        assert champion is not None, model
        files = [a.path for a in mlc.list_artifacts(champion.run_id)]
        assert files, f"{model} v{champion.version}: its run has no artifacts"
    artifacts = s3_keys(stack, "oceanml-mlflow")
    assert any(k.endswith(".ckpt") or "/model" in k for k in artifacts), artifacts[:20]


def test_a_dataset_version_is_restored_from_the_s3_remote_on_a_clean_checkout(
        lifecycle, tmp_path) -> None:
    from tasks.dataset import dataset_dir, local_dataset

    settings = lifecycle.settings
    with lifecycle.sessions() as s:
        version = s.scalars(select(Dataset.version).where(Dataset.name == FLEET[0])
                            .order_by(Dataset.id.desc())).first()

    clone = tmp_path / "clean-checkout"
    subprocess.run(["git", "clone", "-q", str(settings.project_dir), str(clone)], check=True)
    assert not (clone / ".dvc" / "cache").exists()
    restored = local_dataset(settings.model_copy(update={"project_dir": clone}), FLEET[0],
                             version)
    assert restored.is_relative_to(clone)
    assert file_digests(restored) == file_digests(dataset_dir(settings, FLEET[0]))


def test_the_same_nightly_a_second_time_adds_nothing(lifecycle) -> None:
    assert lifecycle.after_first["observations"] == 3 * 4 * 60
    assert lifecycle.after_second == lifecycle.after_first
    with lifecycle.sessions() as s:
        second = s.execute(select(TrainingJob.model_name, TrainingJob.reused).where(
            TrainingJob.queued_at.between(lifecycle.second.start_time,
                                          lifecycle.second.end_time))).all()
    assert sorted(second) == sorted((m, True) for m in FLEET)  # reused, not retrained


def test_drift_starts_the_retrain_deployment_for_the_models_it_moved(lifecycle) -> None:
    assert lifecycle.drifted
    done = lifecycle.retrains
    assert sorted(r.parameters["model"] for r in done) == lifecycle.drifted
    assert all(r.state.is_completed() for r in done), [(r.name, r.state.message) for r in done]
    with lifecycle.sessions() as s:
        retrains = s.scalars(select(TrainingJob).where(TrainingJob.trigger == "retrain")).all()
        decisions = {d.model_name: d for d in s.scalars(
            select(DecisionRecord).order_by(DecisionRecord.id))}  # the latest per model
    assert sorted(j.model_name for j in retrains) == lifecycle.drifted
    assert all(j.status == "completed" and j.dataset_version for j in retrains)
    assert all(j.max_epochs == RETRAIN_EPOCHS for j in retrains)  # the deployment's default
    by_run = {str(r.id): r.parameters["model"] for r in done}
    for job in retrains:  # each retrain decided on the dataset it rebuilt with the storm in it
        decision = decisions[job.model_name]
        assert decision.decided_by == f"flow-run:{job.flow_run_id}"
        assert by_run[job.flow_run_id] == job.model_name
        assert decision.dataset_version == job.dataset_version
        assert decision.dataset_version != lifecycle.first_datasets[job.model_name]


def doctor(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / ".venv/bin/oceanml"), "doctor"], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)


def test_doctor_finds_every_backend_of_the_stack(lifecycle, stack) -> None:
    found = doctor()
    assert found.returncode == 0, found.stdout + found.stderr
    status = {line[6:18].strip(): line.split()[0] for line in found.stdout.splitlines()
              if line[:4] in ("ok  ", "FAIL", "warn")}
    assert status == {**{part: "ok" for part in ("database", "landing", "lake", "dvc remote",
                                                 "mlflow", "prefect", "llm", "gpu")},
                      "notify": "warn"}, found.stdout  # the stack sets no webhook
    assert "schema at head" in found.stdout and "work pools oceanml-process" in found.stdout
    wrong = "not-the-key"  # every server refuses it, and doctor names what to set
    mlflow_url = urlsplit(stack.urls["mlflow"])
    refused = doctor(OCEANML_LLM_API_KEY=wrong, PREFECT_API_AUTH_STRING=f"oceanml:{wrong}",
                     OCEANML_MLFLOW_TRACKING_URI=urlunsplit(mlflow_url._replace(
                         netloc=f"oceanml:{wrong}@{mlflow_url.netloc}")))
    assert refused.returncode == 1
    assert sorted(line.split()[1] for line in refused.stdout.splitlines()
                  if line.startswith("FAIL")) == ["llm", "mlflow", "prefect"], refused.stdout
    for fix in ("-> set OCEANML_LLM_API_KEY", "-> set PREFECT_API_AUTH_STRING",
                "MLFLOW_TRACKING_USERNAME"):
        assert fix in refused.stdout, (fix, refused.stdout)
    assert wrong not in refused.stdout + refused.stderr


def test_no_server_of_the_stack_answers_without_its_credentials(lifecycle, stack) -> None:
    """Prefect's API (and so its UI), MLflow's tracking server and the LLM endpoint refuse a
    caller without credentials, and one with a wrong password; only the health probes
    answer. (``oceanml serve``'s keys: tests/serving/test_keys.py.)"""
    import httpx

    user, password = stack.prefect_auth.split(":", 1)
    prefect, mlflow = stack.urls["prefect"], stack.urls["mlflow"]
    guarded = [("POST", f"{prefect}/flow_runs/filter", {}, (user, password)),
               ("GET", f"{mlflow}/api/2.0/mlflow/registered-models/search", None,
                ("oceanml", stack.sentinels["mlflow"])),
               ("GET", f"{stack.urls['llm']}/models", None, None)]
    for method, url, body, login in guarded:
        for auth in (None, ("oceanml", "not-the-password")):
            answer = httpx.request(method, url, json=body, auth=auth, timeout=30)
            assert answer.status_code == 401, (url, auth and "wrong password", answer.text)
        if login:
            assert httpx.request(method, url, json=body, auth=login, timeout=30).is_success
    assert httpx.get(f"{prefect}/health", timeout=30).status_code == 200
    assert httpx.get(f"{mlflow}/health", timeout=30).status_code == 200


# -- secrets ---------------------------------------------------------------------------------

def pg_dump(stack, database: str) -> bytes:
    binary = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_dump"))
    if not binary:
        pytest.fail("pg_dump not found under /usr/lib/postgresql (Debian's postgresql package)")
    admin = urlsplit(stack.admin_url)
    return subprocess.run([str(binary[-1]), "-h", admin.hostname, "-p", str(admin.port),
                           "-U", admin.username or "postgres", database],
                          check=True, capture_output=True).stdout


def everything_written(stack, settings: Settings) -> Iterator[tuple[str, bytes]]:
    """Every place OceanML wrote to or printed on: the three databases (OceanML's, the Prefect
    server's with its logs, artifacts, parameters and states, the MLflow server's with params,
    tags and metrics), every S3 object, the worker's files and its log (the flows' output),
    and what the CLI prints about the stack."""
    import boto3

    for database in stack.databases:
        yield f"postgresql:{database}", pg_dump(stack, database)
    s3 = boto3.client("s3", endpoint_url=stack.urls["s3"], region_name="us-east-1")
    for bucket in BUCKETS:
        for key in s3_keys(stack, bucket):
            yield f"s3://{bucket}/{key}", s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    for root in (settings.home, settings.project_dir):
        for path in root.rglob("*"):
            if path.is_file() and ".git" not in path.relative_to(root).parts:
                yield str(path), path.read_bytes()
    yield str(stack.worker_log), stack.worker_log.read_bytes()
    cli = str(REPO / ".venv/bin/oceanml")
    for command in ([cli, "settings"], [cli, "doctor"], [cli, "jobs"]):
        done = subprocess.run(command, capture_output=True, env=os.environ, timeout=300)
        yield " ".join(command[1:]), done.stdout + done.stderr


def test_no_credential_is_written_or_printed_anywhere(lifecycle, stack) -> None:
    secrets = {name: value.encode() for name, value in stack.sentinels.items()}
    planted = (stack.dir / "stack.env").read_bytes()  # the scan finds them where they are
    assert all(value in planted for value in secrets.values())
    leaks, scanned = [], 0
    for where, content in everything_written(stack, lifecycle.settings):
        scanned += 1
        leaks += [f"{name} in {where}" for name, value in secrets.items() if value in content]
    assert scanned > 100
    assert not leaks, "\n".join(leaks[:40])


# -- the Prefect UI, as an operator sees it ---------------------------------------------------

SCREENSHOTS = Path(os.environ.get("OCEANML_UI_SCREENSHOTS", REPO / "ci-artifacts" / "ui"))


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("OCEANML_REQUIRE_STACK"):
            pytest.fail("chromium and chromedriver are needed (apt-get install chromium "
                        "chromium-driver)")
        pytest.skip("no chromium/chromedriver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1440,1100"):
        options.add_argument(argument)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield browser
    browser.quit()


def page(browser, url: str, shows: str, shot: str, timeout_s: float = 60) -> str:
    """The text of ``url`` once it shows ``shows``; a screenshot kept as ``shot``.png."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    try:
        WebDriverWait(browser, timeout_s).until(
            lambda b: shows in b.find_element(By.TAG_NAME, "body").text)
    except TimeoutException:
        pass
    finally:
        browser.save_screenshot(str(SCREENSHOTS / f"{shot}.png"))
    text = browser.find_element(By.TAG_NAME, "body").text
    assert shows in text, f"{url} never showed {shows!r}; it shows:\n{text[:2000]}"
    return text


def log_in(browser, ui: str, auth: str, timeout_s: float = 60) -> None:
    """Through the UI's own login page, which a server with an auth string shows first."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{ui}/dashboard")
    found = WebDriverWait(browser, timeout_s).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, "input[type=password]"))
    browser.save_screenshot(str(SCREENSHOTS / "login.png"))
    found[0].send_keys(auth, Keys.ENTER)
    WebDriverWait(browser, timeout_s).until(
        lambda b: not b.find_elements(By.CSS_SELECTOR, "input[type=password]"))


def latest_artifact_id(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC, limit=1)
    assert found, f"no artifact {key}"
    return str(found[0].id)


def test_the_prefect_ui_shows_the_nightly_completed_with_its_reports(
        lifecycle, stack, browser) -> None:
    """The run page says Completed; the artifacts page lists every report; the summary and
    the drift table open as tables (screenshots in OCEANML_UI_SCREENSHOTS)."""
    ui = stack.urls["prefect"].removesuffix("/api")
    log_in(browser, ui, stack.prefect_auth)  # the UI asks first: its API refuses without it
    first = lifecycle.first
    run_page = page(browser, f"{ui}/runs/flow-run/{first.id}", first.name, "nightly-run")
    assert "Completed" in run_page
    listed = page(browser, f"{ui}/artifacts", "nightly-summary", "artifacts")
    for model in FLEET:
        for key in (f"dataset-{model}", f"evaluation-{model}", f"drift-{model}",
                    f"decision-{model}"):
            assert key in listed, key
    assert "ingest-progress" in listed
    summary = page(browser, f"{ui}/artifacts/artifact/{latest_artifact_id('nightly-summary')}",
                   "OceanML nightly", "nightly-summary")
    for model in FLEET:
        assert model in summary
    drift = page(browser, f"{ui}/artifacts/artifact/{latest_artifact_id(f'drift-{FLEET[0]}')}",
                 "feature", "drift-table")
    assert "PSI / KS" in drift and "drifted" in drift


# -- faults: the servers restarting under a running nightly -----------------------------------

def flow_run_state(flow_run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state


def restart(stack, part: str) -> None:
    import sys

    done = subprocess.run([sys.executable, str(REPO / ".ci/stack.py"), "restart", str(stack.dir),
                           part], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def emit_drift(model: str, reason: str) -> None:
    """The event the drift task emits for ``model``, sent as the task sends it."""
    import asyncio

    from prefect.events import Event
    from prefect.events.clients import get_events_client

    async def send() -> None:
        async with get_events_client() as events:
            await events.emit(Event(event="oceanml.drift.detected",
                                    resource={"prefect.resource.id": f"oceanml.model.{model}",
                                              "prefect.resource.name": model},
                                    payload={"reason": reason}))

    asyncio.run(send())


def nothing_half_written(lifecycle, since: datetime) -> None:
    """Every job queued since ``since`` ended; every training recorded since is a version in
    the registry."""
    from core.jobs import FINAL

    mlc = mlflow_client(lifecycle.settings)
    with lifecycle.sessions() as s:
        jobs = s.execute(select(TrainingJob.model_name, TrainingJob.status)
                         .where(TrainingJob.queued_at >= since)).all()
        trained = s.execute(select(TrainingRun.model_name, TrainingRun.model_version)
                            .where(TrainingRun.created_at >= since)).all()
    assert jobs and all(status in FINAL for _, status in jobs), jobs
    for model, version in trained:
        assert mlc.get_model_version(model, version).status == "READY", (model, version)


def night_over(flow_run) -> bool:
    """Whether ``flow_run`` is final, asked until the (maybe restarting) server answers."""
    return wait_until("the Prefect server answering", lambda: flow_run_state(flow_run.id),
                      180).is_final()


def training_in_flight(lifecycle, flow_run, seen: set[int]) -> int | None:
    """A training job of ``flow_run``'s night running now that no restart has hit yet."""
    with lifecycle.sessions() as s:
        return s.scalar(select(TrainingJob.id).where(
            TrainingJob.queued_at >= flow_run.created, TrainingJob.status == "running",
            TrainingJob.id.not_in(seen or {-1})))


def test_server_restarts_under_a_running_nightly(lifecycle, stack) -> None:
    """A new day lands; the nightly starts; while its first model trains the Prefect server
    restarts, and while its next one trains PostgreSQL (which holds OceanML's, Prefect's and
    MLflow's state) does. Each night ends in a final state that says what happened (Completed
    once retries carried it over, else Failed/Crashed with a message); nothing is
    half-written; and the drift trigger, read back by the restarted servers, still starts the
    retrain deployment. The restarts share a night; one that ended before its next training
    began leaves the next restart to a new night on a new day."""
    parts = ["prefect", "postgres"] if stack.pg_data else ["prefect"]  # PostgreSQL if ours
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    nights: list = []
    seen: set[int] = set()
    for part in parts:
        for _ in range(2):  # this night, else a new one
            if not nights or night_over(nights[-1]):
                land(lifecycle.settings, days=1, end=today, scenario="normal",
                     seed=3 + len(nights))
                nights.append(run_deployment("nightly/nightly", timeout=0,
                                             parameters={"max_epochs": RESTART_EPOCHS}))
            night = nights[-1]
            job = wait_until(f"a training of the nightly running, for the {part} restart",
                             lambda n=night: training_in_flight(lifecycle, n, seen)
                             or (flow_run_state(n.id).is_final() and "over"), RUN_TIMEOUT_S)
            if job != "over":
                break
        assert job != "over", f"no night trained while {part} could restart"
        seen.add(job)
        restart(stack, part)
    for night in nights:
        state = wait_until("the nightly in a final state",
                           lambda n=night: (s := flow_run_state(n.id)) and s.is_final() and s,
                           RUN_TIMEOUT_S, every_s=3)
        assert state.type.value in ("COMPLETED", "FAILED", "CRASHED"), state
        assert state.is_completed() or state.message, state
        nothing_half_written(lifecycle, night.created)

    reason = f"{' and '.join(parts)} restarted ({nights[0].id})"
    emit_drift(FLEET[0], reason)
    started = wait_until("a retrain run started by the drift event after the restarts",
                         lambda: [r for r in deployment_runs("retrain/retrain")
                                  if r.parameters.get("reason") == reason], 180)
    assert [r.parameters["model"] for r in started] == [FLEET[0]]
