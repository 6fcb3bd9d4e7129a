"""The release check's judgement on what each version served (pure: arrays in, verdict out):
realized accuracy wins over the estimate once enough answers are labelled, and a deadline
decides on the point figures."""

from __future__ import annotations

import numpy as np

from core.params_schema import ReleasePolicy
from tasks.release_gates import Served, judge

POLICY = ReleasePolicy(min_requests=100, bootstrap_samples=300)


def served(version: str, role: str, n: int, *, failed: float = 0.0, latency: float = 5.0,
           hits: float | None = None, sure: float = 0.6, seed: int = 0) -> Served:
    rng = np.random.default_rng(seed)
    probabilities = np.tile([sure, 1 - sure], (n, 1))
    labelled = None
    if hits is not None:  # labels imported: the answer (class 0) right on a share ``hits``
        true = (rng.random(n) >= hits).astype(int)
        labelled = (true, np.zeros(n, dtype=int))
    return Served(version, role, rng.random(n) < failed, rng.normal(latency, 0.5, n),
                  probabilities, None, labelled)


def test_realized_accuracy_decides_once_enough_answers_are_labelled() -> None:
    # the candidate is surer (estimated better) but really right less often
    champion = served("1", "champion", 400, hits=0.9, sure=0.6)
    candidate = served("2", "canary", 400, hits=0.6, sure=0.95, seed=1)
    verdict = judge(champion, candidate, "canary", POLICY, past_deadline=False)
    assert verdict.action == "abort" and verdict.reason.startswith("accuracy: realized")
    unlabelled = judge(served("1", "champion", 400, sure=0.6),
                       served("2", "canary", 400, sure=0.95, seed=1), "canary", POLICY,
                       past_deadline=False)
    assert unlabelled.action == "promote" and "estimated accuracy" in unlabelled.reason


def test_too_few_requests_wait_and_the_deadline_decides_on_the_point_figures() -> None:
    few = judge(served("1", "champion", 40), served("2", "canary", 40, sure=0.95), "canary",
                POLICY, past_deadline=False)
    assert few.action == "wait" and "requests" in few.reason
    late = judge(served("1", "champion", 40), served("2", "canary", 40, sure=0.95), "canary",
                 POLICY, past_deadline=True)
    assert late.action == "promote" and late.reason.startswith("deadline reached")
    worse = judge(served("1", "champion", 40, sure=0.9), served("2", "canary", 40, sure=0.85),
                  "canary", POLICY, past_deadline=True)
    assert worse.action == "abort" and "accuracy" in worse.reason


def test_a_regressor_or_nothing_served_is_never_promoted_early() -> None:
    champion = served("1", "champion", 300)
    candidate = Served("2", "canary", np.zeros(300, dtype=bool), np.full(300, 5.0), None)
    verdict = judge(champion, candidate, "canary", POLICY, past_deadline=False)
    assert verdict.action == "wait"
    nothing = Served("2", "canary", np.zeros(0, dtype=bool), np.zeros(0), None)
    late = judge(champion, nothing, "canary", POLICY, past_deadline=True)
    assert late.action == "abort" and "nothing served" in late.reason


def test_a_shadow_that_changes_many_answers_needs_a_gain_to_show_for_it() -> None:
    n = 300
    champion = served("1", "champion", n, sure=0.7)
    flipped = served("2", "shadow", n, sure=0.7, seed=1)  # as sure, half the answers changed
    flipped = Served("2", "shadow", flipped.failed, flipped.latency_ms,
                     np.where(np.arange(n)[:, None] % 2 == 0, flipped.probabilities,
                              flipped.probabilities[:, ::-1]))
    verdict = judge(champion, flipped, "shadow", POLICY, past_deadline=True)
    checks = {c.name: c for c in verdict.checks}
    assert checks["agreement"].value == 0.5 and not checks["agreement"].passed
    assert verdict.action == "abort" and "agreement" in verdict.reason
    surer = served("2", "shadow", n, sure=0.95, seed=1)  # same answers, far surer: agrees
    assert judge(champion, surer, "shadow", POLICY, past_deadline=False).action == "promote"
    changed_and_better = Served("2", "shadow", surer.failed, surer.latency_ms,
                                np.where(np.arange(n)[:, None] % 2 == 0, surer.probabilities,
                                         surer.probabilities[:, ::-1]))
    verdict = judge(champion, changed_and_better, "shadow", POLICY, past_deadline=False)
    assert verdict.action == "promote", verdict.reason  # the gain outweighs the changes
