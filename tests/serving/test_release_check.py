"""The release check on what a real uvicorn replica served: it promotes a candidate the
label-free estimate finds clearly better, aborts one that fails a tenth of its requests and
one whose p99 is several times the champion's, and waits on one inside the noise until its
deadline; each decision is recorded with its figures and checks."""

from __future__ import annotations

import time
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select

from core.champion_history import history
from core.db import Prediction
from core.params_schema import ReleasePolicy
from core.records import DecisionRecord
from core.registry import client
from core.releases import Release, start_release, utcnow
from tasks.release_check import check_release
from tests.registered import SPEC, Failing, Slow, register, with_step
from tests.serving.conftest import calibrated_net
from tests.serving.test_endpoint import PREDICT
from tests.serving.test_releases import answers_counted, images, wait_for_release

POLICY = ReleasePolicy(min_requests=80, bootstrap_samples=300)


def release_traffic(settings, sessions, served, net, mode: str, share: float,
                    requests: int) -> Release:
    """``net`` registered and released beside the champion; ``requests`` different images
    sent one after another (a batch of one each); every answer recorded."""
    mlc = client(settings)
    version = register(mlc, settings, net, f"candidate-{mode}-{share}")
    release = start_release(sessions, SPEC.name, version, "1", mode, share, timedelta(hours=1),
                            "test")
    wait_for_release(served, True)
    statuses = []
    with httpx.Client(base_url=served.url, timeout=30) as http:
        for body in images(requests, seed=7):
            statuses.append(http.post(PREDICT, json={"image": body}).status_code)
    assert set(statuses) <= {200, 500}
    expected = requests * (2 if mode == "shadow" else 1)
    deadline = time.monotonic() + 10
    while recorded(sessions) < expected:  # the log writes every 0.2 s; shadows trail
        assert time.monotonic() < deadline, f"{recorded(sessions)} of {expected} recorded"
        time.sleep(0.2)
    return release


def recorded(sessions) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(Prediction))


def ended(sessions, release: Release) -> Release:
    with sessions() as s:
        return s.get(Release, release.id)


def test_a_clearly_better_shadow_is_promoted_through_the_champion_history(
        settings, sessions, served) -> None:
    sharper = calibrated_net(1)
    sharper.temperature.fill_(0.05)  # the same answers, far surer of them
    release = release_traffic(settings, sessions, served, sharper, "shadow", 1.0, 120)
    outcome = check_release(sessions, client(settings), SPEC.name, POLICY)
    assert outcome.action == "promote", outcome.reason
    checks = {c["name"]: c for c in outcome.checks}
    assert checks["accuracy"]["passed"] and checks["accuracy"]["value"] > 0.1
    assert checks["errors"]["passed"] and "latency" not in checks  # a shadow's is not comparable
    assert checks["agreement"]["value"] == 1.0  # the same classes, only surer
    assert outcome.figures.pairs == 120 and outcome.figures.agreement == 1.0
    row = ended(sessions, release)
    assert row.state == "promoted" and not row.forced and row.decided_by == "release-check"
    assert row.evidence["figures"]["pairs"] == 120
    with sessions() as s:
        change = history(s, SPEC.name)[-1]
        decision = s.scalar(select(DecisionRecord).order_by(DecisionRecord.id.desc()).limit(1))
    assert change.version == release.candidate_version and not change.forced
    assert change.decided_by == "release-check" and f"release {release.id}" in change.reason
    assert {c["name"] for c in decision.checks} == {"requests", "errors", "accuracy",
                                                    "agreement"}
    assert client(settings).get_model_version_by_alias(SPEC.name, "champion").version == \
        int(release.candidate_version)


# 0.1 s: past any hiccup of the champion's under a loaded suite (its p99 is among ~100)
@pytest.mark.parametrize("step, failing", [(Failing(), "errors"), (Slow(0.1), "latency")],
                         ids=["fails-a-tenth", "slow"])
def test_a_canary_that_fails_or_slows_is_aborted_with_its_figures(
        settings, sessions, served, step, failing) -> None:
    release = release_traffic(settings, sessions, served, with_step(calibrated_net(1), step),
                              "canary", 0.5, 200)
    outcome = check_release(sessions, client(settings), SPEC.name, POLICY)
    assert outcome.action == "abort", outcome.reason
    assert outcome.reason.startswith(f"{failing}:"), outcome.reason
    canary = next(v for v in outcome.figures.versions if v.role == "canary")
    champion = next(v for v in outcome.figures.versions if v.role == "champion")
    if failing == "errors":
        assert 0.04 <= canary.error_rate <= 0.2 and champion.errors == 0
        counted = answers_counted(served)  # /metrics: errors per version and role
        assert counted[(release.candidate_version, "canary", "error")] == canary.errors
    else:
        assert canary.p99_ms > 2 * champion.p99_ms and canary.errors == 0
    row = ended(sessions, release)
    assert row.state == "aborted" and row.reason == outcome.reason and not row.forced
    assert {c["name"] for c in row.evidence["checks"]} >= {"errors", "latency", "accuracy"}
    assert client(settings).get_model_version_by_alias(SPEC.name, "champion").version == 1
    with sessions() as s:
        assert not history(s, SPEC.name)  # nothing moved


def test_a_candidate_inside_the_noise_waits_until_its_deadline(
        settings, sessions, served) -> None:
    release = release_traffic(settings, sessions, served, calibrated_net(1), "shadow", 1.0, 100)
    mlc = client(settings)
    waiting = check_release(sessions, mlc, SPEC.name, POLICY)
    assert waiting.action == "wait" and "accuracy" in waiting.reason, waiting.reason
    assert ended(sessions, release).state == "open"
    decided = check_release(sessions, mlc, SPEC.name, POLICY, now=utcnow() + timedelta(hours=2))
    assert decided.action == "promote" and decided.reason.startswith("deadline reached")
    assert ended(sessions, release).state == "promoted"
