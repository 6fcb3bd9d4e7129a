"""The release check's judgement: promote, abort or wait, from what each version served.

Pure: per-request failures and latencies and per-image probabilities in, a verdict with its
checks out. Every comparison is a bootstrap over requests (pairs of the same image for a
shadow, two independent samples for a canary, whose share is a hash of the request), read at
the policy's one-sided confidence:

- ``errors``: the candidate's error rate against ``max_error_ratio`` times the champion's plus
  half a percent. Above it significantly: abort.
- ``latency`` (canary; a shadow's answers wait for idle moments and are not comparable): p99
  of the candidate over the champion's against ``max_latency_ratio``. Above significantly:
  abort.
- ``accuracy``: realized on the labelled answers where there are ``min_requests`` of them,
  else estimated without labels (ATC with each version's threshold); the candidate's gain.
  Significantly below zero: abort. Significantly above ``required_gain``: this check passes.
- ``agreement`` (shadow): the share of pairs both versions answer with the same class. Below
  ``min_agreement`` the candidate changes many answers, and it is promoted only with a
  significant accuracy gain to show for it; otherwise this check passes.

Promote when every check passes with ``min_requests`` answered per version; abort when one
fails significantly; otherwise wait, and at the deadline decide with what there is: promote
if no point estimate is against the candidate, else abort.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.params_schema import ReleasePolicy
from tasks.gates import Check
from tasks.performance import expected_metrics

ERROR_SLACK = 0.005  # an error rate this far above the champion's ratio is still noise


@dataclass(frozen=True)
class Served:
    """What one version served during a release."""

    version: str
    role: str
    failed: np.ndarray  # per request: whether the version failed to answer it
    latency_ms: np.ndarray  # per answered request
    probabilities: np.ndarray | None  # per answered image (n, k); None for a regressor
    threshold: float | None = None  # the version's ATC threshold
    labelled: tuple[np.ndarray, np.ndarray] | None = None  # (true, predicted) class indices


@dataclass(frozen=True)
class Verdict:
    action: str  # promote | abort | wait
    reason: str
    checks: tuple[Check, ...]


@dataclass(frozen=True)
class Interval:
    value: float
    low: float  # one-sided bounds at the policy's confidence
    high: float


def bootstrap(statistic: Callable[[np.random.Generator | None], float], policy: ReleasePolicy,
              seed: int = 0) -> Interval:
    """``statistic(None)`` on the data as served, and its one-sided bounds over
    ``policy.bootstrap_samples`` resamples (``statistic(rng)`` draws one)."""
    rng = np.random.default_rng(seed)
    draws = np.array([statistic(rng) for _ in range(policy.bootstrap_samples)])
    tail = 1.0 - policy.confidence
    return Interval(statistic(None), float(np.quantile(draws, tail)),
                    float(np.quantile(draws, 1.0 - tail)))


def resample(values: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    return values if rng is None else values[rng.integers(0, len(values), len(values))]


def error_check(champion: Served, candidate: Served, policy: ReleasePolicy) -> tuple[Check, str]:
    """``pass``, ``fail`` or ``open`` with its check: excess error rate over the allowance."""
    def excess(rng: np.random.Generator | None) -> float:
        return float(resample(candidate.failed, rng).mean()
                     - policy.max_error_ratio * resample(champion.failed, rng).mean()
                     - ERROR_SLACK)

    i = bootstrap(excess, policy)
    allowed = policy.max_error_ratio * float(champion.failed.mean()) + ERROR_SLACK
    detail = (f"error rate {candidate.failed.mean():.2%} vs champion "
              f"{champion.failed.mean():.2%} (allowed {allowed:.2%})")
    outcome = "fail" if i.low > 0 else "pass" if i.high <= 0 else "open"
    return Check("errors", float(candidate.failed.mean()), allowed, outcome == "pass",
                 f"{detail}; excess {i.value:+.3f} [{i.low:+.3f}, {i.high:+.3f}]"), outcome


def latency_check(champion: Served, candidate: Served, policy: ReleasePolicy
                  ) -> tuple[Check, str]:
    def ratio(rng: np.random.Generator | None) -> float:
        return float(np.percentile(resample(candidate.latency_ms, rng), 99)
                     / max(np.percentile(resample(champion.latency_ms, rng), 99), 1e-9))

    if not len(candidate.latency_ms) or not len(champion.latency_ms):
        return Check("latency", None, policy.max_latency_ratio, False, "no answers yet"), "open"
    i = bootstrap(ratio, policy)
    outcome = ("fail" if i.low > policy.max_latency_ratio else
               "pass" if i.high <= policy.max_latency_ratio else "open")
    return Check("latency", i.value, policy.max_latency_ratio, outcome == "pass",
                 f"p99 {np.percentile(candidate.latency_ms, 99):.1f} ms vs champion "
                 f"{np.percentile(champion.latency_ms, 99):.1f} ms: ratio {i.value:.2f} "
                 f"[{i.low:.2f}, {i.high:.2f}]"), outcome


def accuracy_check(champion: Served, candidate: Served, policy: ReleasePolicy, paired: bool
                   ) -> tuple[Check, str]:
    """The candidate's accuracy gain: realized where enough answers are labelled, else
    estimated. ``paired``: row i of both sides is the same image (a shadow)."""
    if all(s.labelled is not None and len(s.labelled[0]) >= policy.min_requests
           for s in (champion, candidate)):
        how = "realized"

        def accuracy(side: Served, rows: np.ndarray | None) -> float:
            true, predicted = side.labelled
            hit = true == predicted
            return float((hit if rows is None else hit[rows]).mean())
        sizes = (len(champion.labelled[0]), len(candidate.labelled[0]))
    elif champion.probabilities is not None and candidate.probabilities is not None \
            and len(champion.probabilities) and len(candidate.probabilities):
        how = "estimated"

        def accuracy(side: Served, rows: np.ndarray | None) -> float:
            p = side.probabilities if rows is None else side.probabilities[rows]
            return expected_metrics(p, side.threshold)["accuracy"]
        sizes = (len(champion.probabilities), len(candidate.probabilities))
    else:
        return Check("accuracy", None, policy.required_gain, False,
                     "no accuracy to compare (a regressor, or nothing answered)"), "open"
    paired = paired and sizes[0] == sizes[1]

    def gain(rng: np.random.Generator | None) -> float:
        if rng is None:
            return accuracy(candidate, None) - accuracy(champion, None)
        a = rng.integers(0, sizes[0], sizes[0])
        b = a if paired else rng.integers(0, sizes[1], sizes[1])
        return accuracy(candidate, b) - accuracy(champion, a)

    i = bootstrap(gain, policy)
    outcome = ("fail" if i.high < 0 else "pass" if i.low > policy.required_gain else "open")
    return Check("accuracy", i.value, policy.required_gain, outcome == "pass",
                 f"{how} accuracy {accuracy(candidate, None):.3f} vs champion "
                 f"{accuracy(champion, None):.3f}: gain {i.value:+.3f} "
                 f"[{i.low:+.3f}, {i.high:+.3f}]"), outcome


def agreement_check(champion: Served, candidate: Served, policy: ReleasePolicy,
                    accuracy: str) -> tuple[Check, str]:
    """Shadow pairs answered alike, against ``min_agreement``; a significant accuracy gain
    (``accuracy`` is that check's outcome) outweighs a low agreement."""
    a, b = champion.probabilities, candidate.probabilities
    if a is None or b is None or len(a) != len(b) or not len(a):
        return Check("agreement", None, policy.min_agreement, accuracy == "pass",
                     "no pairs of class answers"), "pass" if accuracy == "pass" else "open"
    agreement = float((a.argmax(axis=1) == b.argmax(axis=1)).mean())
    passed = agreement >= policy.min_agreement or accuracy == "pass"
    return Check("agreement", agreement, policy.min_agreement, passed,
                 f"{agreement:.1%} of {len(a)} pairs answered alike"
                 + ("" if agreement >= policy.min_agreement else
                    "; a gain shown" if passed else "; no gain shown for the changes")), \
        "pass" if passed else "open"


def judge(champion: Served, candidate: Served, mode: str, policy: ReleasePolicy, *,
          past_deadline: bool) -> Verdict:
    """Promote, abort or wait, with every check and the reason in words."""
    if not len(champion.failed) or not len(candidate.failed):
        checks = (Check("requests", 0.0, float(policy.min_requests), False,
                        f"{len(candidate.failed)} answered by v{candidate.version}, "
                        f"{len(champion.failed)} by the champion"),)
        if past_deadline:
            return Verdict("abort", "deadline reached without the evidence to promote: "
                           "nothing served", checks)
        return Verdict("wait", "not decided yet (requests)", checks)
    outcomes = [error_check(champion, candidate, policy)]
    if mode == "canary":
        outcomes.append(latency_check(champion, candidate, policy))
    outcomes.append(accuracy_check(champion, candidate, policy, paired=mode == "shadow"))
    if mode == "shadow":
        outcomes.append(agreement_check(champion, candidate, policy, outcomes[-1][1]))
    enough = min(len(champion.failed), len(candidate.failed))
    checks = (Check("requests", float(enough), float(policy.min_requests),
                    enough >= policy.min_requests,
                    f"{len(candidate.failed)} answered by v{candidate.version}, "
                    f"{len(champion.failed)} by the champion"),
              *(check for check, _ in outcomes))
    failed = [check for check, outcome in outcomes if outcome == "fail"]
    if failed:
        return Verdict("abort", "; ".join(f"{c.name}: {c.detail}" for c in failed), checks)
    if enough >= policy.min_requests and all(o == "pass" for _, o in outcomes):
        return Verdict("promote", "every check passed: " + "; ".join(
            c.detail for c, _ in outcomes), checks)
    if not past_deadline:
        waiting = [c.name for c in checks if not c.passed]
        return Verdict("wait", f"not decided yet ({', '.join(waiting)})", checks)
    against = [c for c, _ in outcomes if c.value is not None and not _favours(c)]
    if enough and not against:
        return Verdict("promote", "deadline reached; nothing against the candidate: "
                       + "; ".join(c.detail for c, _ in outcomes), checks)
    return Verdict("abort", "deadline reached without the evidence to promote: "
                   + ("; ".join(f"{c.name}: {c.detail}" for c in against)
                      or "nothing served"), checks)


def _favours(check: Check) -> bool:
    """Whether a check's point value is on the candidate's side of its bar."""
    if check.name == "agreement":
        return check.passed
    if check.name == "accuracy":
        return check.value >= check.threshold
    return check.value <= check.threshold
