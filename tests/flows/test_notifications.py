"""Automations as code, on a real Prefect server (the harness): ``oceanml deploy`` creates
them; a run of the nightly, monitor or retrain deployment that ends badly, drift, a
promotion and a rollback each send one message, with the model, the reason and a link to
the run, to a webhook on loopback; a run past its deadline is cancelled by the server, its
jobs are closed, and the next run completes."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.states import Cancelled, Completed, Crashed, Failed, Running
from sqlalchemy import func, select

from core.db import Observation
from core.settings import Settings
from oceanml.automations import PREFIX
from oceanml.doctor import check_notifications
from tests.conftest import make_project
from tests.deployed import REPO, land, prefect, stop_worker
from tests.flows.test_deployments import deploy_on_pool
from tests.openai_server import OpenAIStub

pytestmark = pytest.mark.slow
TOKEN = "hook-token-5ec7e7"  # the secret part of the webhook's URL


class Receiver:
    """A webhook on loopback that keeps every JSON body posted to it."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        received = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                """Quiet: the test reads what was kept."""

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.bodies.append(json.loads(body))
                received.paths.append(self.path)
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook/{TOKEN}"

    def wait_for(self, count: int, timeout_s: float = 90.0) -> list[dict]:
        """What came once ``count`` different messages (by subject) have, or by the timeout."""
        deadline = time.monotonic() + timeout_s
        while (len({b.get("subject") for b in self.bodies}) < count
               and time.monotonic() < deadline):
            time.sleep(0.5)
        time.sleep(5.0)  # room for a duplicate to arrive, if the server sent one
        return list(self.bodies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(prefect_harness):
    received = Receiver()
    yield received
    received.close()
    with get_client(sync_client=True) as client:  # the harness outlives this test
        for automation in client.read_automations():
            if automation.name.startswith(PREFIX):
                client.delete_automation(automation.id)


def oceanml(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    cli = REPO / ".venv/bin/oceanml"
    return subprocess.run([str(cli), *args], cwd=REPO, env=env, capture_output=True, text=True)


def run_of(client, deployment: str, **kwargs):
    found = client.read_deployment_by_name(f"{deployment}/{deployment}")
    return client.create_flow_run_from_deployment(found.id, **kwargs)


@flow(name="model-event-source")
def model_events() -> UUID:
    """The three model events, emitted by the code the stages use, inside a run."""
    from prefect.runtime import flow_run

    from tasks.champion import PROMOTED_EVENT, ROLLED_BACK_EVENT, emit_champion_event
    from tasks.drift import emit_drift_event

    emit_drift_event("debris-classifier", "ds-9", "14/23 features drifted", 0.61)
    emit_champion_event(PROMOTED_EVENT, "plastic-detector", "7", "6",
                        "macro_f1 0.91 beats the champion's 0.88")
    emit_champion_event(ROLLED_BACK_EVENT, "algae-bloom", "3", "4", "v4 misses blooms")
    return flow_run.get_id()


def test_bad_endings_drift_promotions_and_rollbacks_each_send_one_message(receiver):
    env = {**deploy_on_pool("nightly", "oceanml-process"), "OCEANML_NOTIFY_WEBHOOK_URL":
           receiver.url}
    for name in ("monitor", "retrain"):
        deployed = prefect("--no-prompt", "deploy", "--name", name, env=env)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    before = runs_of_watched()
    applied = oceanml("deploy", "--automations-only", env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert TOKEN not in applied.stdout + applied.stderr
    assert "oceanml: run ended badly" in applied.stdout
    assert "messages go to the custom-webhook/oceanml-notify block" in applied.stdout
    again = oceanml("deploy", "--automations-only", env=env)  # applying twice: one of each
    assert again.returncode == 0, again.stderr
    told = check_notifications(Settings(notify_webhook_url=receiver.url))
    assert told.ok and told.detail.startswith("a webhook: 7 automations on"), told
    assert TOKEN not in told.detail

    with get_client(sync_client=True) as client:
        ours = [a.name for a in client.read_automations() if a.name.startswith(PREFIX)]
        assert sorted(ours) == sorted(set(ours)) and len(ours) == 7  # 3 deadlines + 4
        block = client.read_block_document_by_name("oceanml-notify", "custom-webhook",
                                                    include_secrets=False)
        assert TOKEN not in json.dumps(block.data, default=str)  # a secret, not plain text
        endings = {"nightly": Failed(message="1 of 5 model branches failed: debris-"
                                             "classifier: StageTimeout: train passed 7200 s"),
                   "monitor": Crashed(message="Flow run infrastructure exited with code 137"),
                   "retrain": Cancelled(message="cancelled by hand")}
        runs = {}
        for name, ending in endings.items():
            parameters = {"model": "algae-bloom"} if name == "retrain" else {}
            runs[name] = run_of(client, name, parameters=parameters)
            client.set_flow_run_state(runs[name].id, Running(), force=True)
            client.set_flow_run_state(runs[name].id, ending, force=True)
        completed = run_of(client, "nightly")  # a run that ends well sends nothing
        client.set_flow_run_state(completed.id, Running(), force=True)
        client.set_flow_run_state(completed.id, Completed(), force=True)
    events_run = model_events()

    bodies = receiver.wait_for(6)
    forget_runs_since(before)  # the drift event started a retrain run: the harness outlives us
    assert all(path == f"/hook/{TOKEN}" for path in receiver.paths)
    assert not any(TOKEN in json.dumps(body) for body in bodies)
    by_subject = {body["subject"]: body["text"] for body in bodies}
    # one message each (one automation of each kind, checked above); an identical copy is the
    # event bus's at-least-once delivery: a Prefect server on SQLite retries an event whose
    # evaluation met a locked database, and the triggers that had fired for it fire again (all
    # six came twice once in CI, beside the stack's lifecycle); a message that differs is a bug
    assert all(body == {"subject": body["subject"], "text": by_subject[body["subject"]]}
               for body in bodies), bodies
    expected = {
        f"OceanML: nightly run {runs['nightly'].name} Failed":
            ["model: the fleet", "reason: 1 of 5 model branches failed: debris-classifier"],
        f"OceanML: monitor run {runs['monitor'].name} Crashed":
            ["reason: Flow run infrastructure exited with code 137"],
        f"OceanML: retrain run {runs['retrain'].name} Cancelled":
            ["model: algae-bloom", "reason: cancelled by hand"],
        "OceanML: debris-classifier: drift detected":
            ["model: debris-classifier", "reason: 14/23 features drifted",
             "reference dataset: ds-9", "share drifted: 0.61"],
        "OceanML: plastic-detector: model promoted":
            ["version: 7", "previous: 6", "reason: macro_f1 0.91 beats the champion's 0.88"],
        "OceanML: algae-bloom: model rolled back": ["version: 3", "reason: v4 misses blooms"],
    }
    assert set(by_subject) == set(expected), by_subject.keys()
    for subject, lines in expected.items():
        for line in lines:
            assert line in by_subject[subject], (subject, by_subject[subject])
    for name, run in runs.items():  # a link to the run (or its id, without a UI URL)
        assert str(run.id) in by_subject[f"OceanML: {name} run {run.name} "
                                         f"{endings[name].name}"]
    assert str(events_run) in by_subject["OceanML: plastic-detector: model promoted"]
    assert "version:" not in by_subject["OceanML: debris-classifier: drift detected"]


def test_a_run_past_its_deadline_is_cancelled_and_the_next_one_completes(
        receiver, settings, sessions):
    from core.jobs import list_jobs, queue_job

    make_project(settings.project_dir)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    land(settings, days=1, end=end, scenario="normal", seed=3)
    pool = "oceanml-deadline-test"
    with OpenAIStub(latency_s=3600.0) as llm:  # an LLM endpoint that never answers
        env = {**deploy_on_pool("monitor", pool), "OCEANML_NOTIFY_WEBHOOK_URL": receiver.url,
               "OCEANML_RUN_DEADLINES_S": json.dumps({"monitor": 20}),
               "OCEANML_LLM_PROVIDER": "openai", "OCEANML_LLM_BASE_URL": llm.base_url,
               "OCEANML_LLM_TIMEOUT_S": "3600", "OCEANML_LLM_MAX_RETRIES": "0"}
        applied = oceanml("deploy", "--automations-only", env=env)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        with get_client(sync_client=True) as client:
            stalled = run_of(client, "monitor", parameters={"models": ["plastic-detector"]})
        job = queue_job(sessions, "plastic-detector", None, "retrain", flow_run_id=str(stalled.id))
        worker = subprocess.Popen(
            [str(REPO / ".venv/bin/prefect"), "worker", "start", "--pool", pool],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        try:
            first = wait_final(stalled.id, 240)
            assert llm.requests, "the run never reached the LLM"
            roomier = {**env, "OCEANML_RUN_DEADLINES_S": json.dumps({"monitor": 900})}
            assert oceanml("deploy", "--automations-only", env=roomier).returncode == 0
            with get_client(sync_client=True) as client:
                nxt = run_of(client, "monitor", parameters={"models": ["plastic-detector"]},
                             job_variables={"env": {"OCEANML_LLM_PROVIDER": "heuristic"}})
            second = wait_final(nxt.id, 300)
        finally:
            log = stop_worker(worker, grace_s=0.1)
    assert first.state.is_cancelled(), (first.state, log[-4000:])
    ran_s = (first.state.timestamp - first.start_time).total_seconds()
    assert 20 <= ran_s < 20 + 90, ran_s  # the deadline, the server's evaluation and the kill
    assert second.state.is_completed(), (second.state, log[-4000:])
    (closed,) = [j for j in list_jobs(sessions, "plastic-detector") if j.id == job]
    assert closed.status == "failed"
    assert f"its run {first.name} was cancelled" in closed.error  # by the flow's hook
    with sessions() as session:  # what the stalled run stored is kept, and not stored twice
        assert session.scalar(select(func.count()).select_from(Observation)) == 4 * 60
    subjects = [body["subject"] for body in receiver.wait_for(2)]
    assert sorted(subjects) == sorted([f"OceanML: monitor run {first.name} passed its deadline",
                                       f"OceanML: monitor run {first.name} Cancelled"]), subjects


def runs_of_watched() -> set[UUID]:
    with get_client(sync_client=True) as client:
        ids = [client.read_deployment_by_name(f"{n}/{n}").id
               for n in ("nightly", "monitor", "retrain")]
        return {r.id for r in client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=ids)))}


def forget_runs_since(before: set[UUID]) -> None:
    with get_client(sync_client=True) as client:
        for run_id in runs_of_watched() - before:
            client.delete_flow_run(run_id)


def wait_final(run_id: UUID, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            if run.state.is_final() or time.monotonic() > deadline:
                return run
            time.sleep(1.0)

