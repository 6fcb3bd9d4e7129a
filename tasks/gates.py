"""The promotion gates as pure decisions: reports and a policy in, a :class:`Decision` out.

Three families of checks, each kept in the decision record whether it passed or not:

- the **floor**: an absolute bar on the gated metric;
- the **trivial predictors** (:mod:`tasks.baselines`): every version, a first one included,
  must beat the best trivial answer on its own test split with confidence, and a regressor
  must explain every target (R2 above 0 with confidence). A floor alone lets through a model
  that is worse than predicting the train mean;
- the **champion**: a gain that clears the margin with confidence, and no slice regressing
  past a bound.

Confidence is a one-sided paired bootstrap over the same test examples (:func:`gain_lower_bound`);
reports without per-example labels (recorded before they were kept) are judged on point values.
Each check's ``detail`` says what happened, in the words of its outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.params_schema import PromotionPolicy


@dataclass(frozen=True)
class Check:
    """One gate: what was measured, the bar, and whether it passed."""

    name: str
    value: float | None
    threshold: float | None
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    checks: tuple[Check, ...] = ()
    interval: dict[str, Any] | None = None  # gains and their lower bounds, when measured


def decide_promotion(
    challenger: dict[str, Any], champion: dict[str, Any] | None, policy: PromotionPolicy
) -> Decision:
    """Floor, the trivial predictors, then (with a champion) a gain that clears the margin
    and no slice regressing too far. Every gate is checked and kept in ``checks``; the reason
    is the first that failed, or why it passed.

    ``challenger`` / ``champion`` are evaluation reports (``overall``, ``slices``, the
    per-example ``examples`` and, for the challenger, ``trivial``: the trivial predictors'
    reports on the same split) from :func:`tasks.evaluate.evaluate_versions`.
    """
    m = policy.metric
    value = challenger["overall"][m]
    floor = floor_check(value, policy)
    trivial, figures = trivial_checks(challenger, policy)
    checks: tuple[Check, ...] = (floor, *trivial)
    interval: dict[str, Any] = {"trivial": figures} if figures else {}
    if champion is not None:
        champion_gates, gain = champion_checks(challenger, champion, policy)
        checks += champion_gates
        interval.update(gain)
    failed = next((c for c in checks if not c.passed), None)
    if failed is not None:
        return Decision(False, failed.detail, checks, interval or None)
    best = max(figures, key=lambda f: f["gated"] if policy.higher_is_better else -f["gated"])
    beats = f"beats the {best['name']} predictor's {best['gated']:.3f}"
    if champion is None:
        reason = f"no champion yet; {m} {value:.3f} passes the bar {policy.floor:.3f} and {beats}"
    else:
        low = interval.get("lower_bound")
        bound = f" ({policy.confidence:.0%} lower bound {low:.3f})" if low is not None else ""
        reason = (f"{m} {value:.3f} beats the champion's {champion['overall'][m]:.3f} by "
                  f"{interval['gain']:.3f}{bound} with no slice regressing past "
                  f"{policy.max_slice_drop:.2f}, and {beats}")
    return Decision(True, reason, checks, interval)


def floor_check(value: float, policy: PromotionPolicy) -> Check:
    """The absolute bar on the gated metric."""
    passed = policy.gain(value, policy.floor) >= 0
    if policy.higher_is_better:
        side = "at or above the floor" if passed else "below the floor"
    else:
        side = "at or below the ceiling" if passed else "above the ceiling"
    return Check("floor", value, policy.floor, passed,
                 f"{policy.metric} {value:.3f} is {side} {policy.floor:.3f}")


def trivial_checks(challenger: dict[str, Any], policy: PromotionPolicy
                   ) -> tuple[tuple[Check, ...], list[dict[str, Any]]]:
    """Beat the best trivial predictor on the gated metric with confidence (gain lower bound
    above 0) and, for a regressor, R2 above 0 on every target with that confidence.

    Returns the checks and each trivial predictor's figures (name, overall metrics, the gated
    value), for the decision record. A report without trivial predictors fails the check: a
    version is never promoted on the floor alone.
    """
    m = policy.metric
    reports = challenger.get("trivial") or {}
    if not reports:
        return (Check("trivial", None, 0.0, False,
                      "the evaluation has no trivial predictor's figures to compare with "
                      "(evaluate the version again)"),), []
    figures = [{"name": name, "gated": r["overall"][m],
                **{k: v for k, v in r["overall"].items() if k != "n"}}
               for name, r in reports.items()]
    value = challenger["overall"][m]
    for f in figures:
        f["gain"] = policy.gain(value, f["gated"])
        low = gain_lower_bound(challenger, reports[f["name"]], policy)
        if low is not None:
            f["lower_bound"] = low
    best = max(figures, key=lambda f: f["gated"] if policy.higher_is_better else -f["gated"])
    gain, low = best["gain"], best.get("lower_bound")
    measured = gain if low is None else low
    passed = measured > 0
    if low is None:
        how = f"gain {gain:+.3f} {'is' if passed else 'is not'} above 0"
    else:
        how = (f"gain {gain:+.3f}, {policy.confidence:.0%} lower bound {low:+.3f} "
               f"{'is' if passed else 'is not'} above 0")
    verdict = "beats" if passed else "does not beat"
    check = Check("trivial", measured, 0.0, passed,
                  f"{m} {value:.3f} {verdict} the {best['name']} predictor's "
                  f"{best['gated']:.3f} ({how})")
    return (check, *r2_checks(challenger, policy)), figures


def r2_checks(report: dict[str, Any], policy: PromotionPolicy) -> tuple[Check, ...]:
    """R2 above 0 on every target at ``policy.confidence``: a regressor must explain each
    target better than a constant, not only on average. Classification reports have none.

    R2 here is against the train mean (the ``mean`` trivial predictor, R2 0 by construction):
    ``1 - SSE(model) / SSE(train mean)`` per target; its lower bound comes from a paired
    bootstrap of the squared-error gain over the mean on the same rows, on the same scale.
    Unlike R2 against each resample's own mean it does not blow up on resamples that miss a
    heavy-tailed target's few extreme rows. The report's plain R2 is shown beside it.
    """
    targets = report.get("per_target")
    if not targets:
        return ()
    skill, bounds = r2_against_mean(report, policy)
    checks = []
    for i, (name, m) in enumerate(targets.items()):
        if skill is None:
            measured, shown = m["r2"], f"R2 {m['r2']:+.3f}"
        else:
            measured = float(bounds[i])
            shown = (f"R2 {m['r2']:+.3f} (against the train mean {skill[i]:+.3f}, "
                     f"{policy.confidence:.0%} lower bound {measured:+.3f})")
        passed = measured > 0
        checks.append(Check(f"r2 {name}", measured, 0.0, passed,
                            f"{name}: {shown} {'is' if passed else 'is not'} above 0 (the "
                            f"model {'explains' if passed else 'does not explain'} it better "
                            "than a constant)"))
    return tuple(checks)


def champion_checks(challenger: dict[str, Any], champion: dict[str, Any],
                    policy: PromotionPolicy) -> tuple[tuple[Check, ...], dict[str, Any]]:
    """A gain over the champion that clears the margin (with confidence when the examples
    pair up), and no slice regressing past ``policy.max_slice_drop``."""
    m = policy.metric
    value, best = challenger["overall"][m], champion["overall"][m]
    gain = policy.gain(value, best)
    low = gain_lower_bound(challenger, champion, policy)
    if low is None:
        passed = gain >= policy.margin
        margin = Check("gain", gain, policy.margin, passed,
                       f"{m} {value:.3f} {'beats' if passed else 'does not beat'} the "
                       f"champion's {best:.3f} by the margin {policy.margin:.3f}")
        interval: dict[str, Any] = {"gain": gain}
    else:
        passed = low > policy.margin
        margin = Check("gain_lower_bound", low, policy.margin, passed,
                       f"{m} {value:.3f} against the champion's {best:.3f}: gain {gain:.3f}, "
                       f"{policy.confidence:.0%} lower bound {low:.3f} "
                       f"{'clears' if passed else 'does not clear'} the margin "
                       f"{policy.margin:.3f}")
        interval = {"gain": gain, "lower_bound": low, "confidence": policy.confidence}
    slices = []
    for name, ref in champion.get("slices", {}).items():
        mine = challenger.get("slices", {}).get(name)
        if mine is None:
            continue
        drop = -policy.gain(mine[m], ref[m])
        ok = drop <= policy.max_slice_drop
        slices.append(Check(f"slice {name}", drop, policy.max_slice_drop, ok,
                            f"slice {name} {ref[m]:.3f} -> {mine[m]:.3f}: "
                            + (f"within {policy.max_slice_drop:.2f}" if ok else
                               f"regresses more than {policy.max_slice_drop:.2f}")))
    return (margin, *slices), interval


def sample_metric(metric: str, y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """``metric`` of one (re)sample, as :mod:`tasks.evaluate` defines it (macro-F1 over the
    classes present in the labels), in plain numpy: the bootstrap computes it thousands of
    times."""
    if metric == "accuracy":
        return float((y_true == y_pred).mean())
    if metric == "macro_f1":
        cm = np.bincount(y_true * n_classes + y_pred,
                         minlength=n_classes * n_classes).reshape(n_classes, n_classes)
        support, predicted = cm.sum(axis=1), cm.sum(axis=0)
        f1 = 2 * np.diag(cm) / np.maximum(support + predicted, 1)
        present = support > 0
        return float(f1[present].mean()) if present.any() else 0.0
    if metric == "mae":
        return float(np.abs(y_true - y_pred).mean())
    if metric == "rmse":
        return float(np.sqrt(((y_true - y_pred) ** 2).mean()))
    raise KeyError(metric)


def _paired(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Both reports carry examples on the same labels (the same split, in the same order)."""
    if not a or not b:
        return False
    y_a, y_b = np.asarray(a["y_true"]), np.asarray(b["y_true"])
    return y_a.shape == y_b.shape and len(y_a) >= 2 and bool((y_a == y_b).all())


def gain_lower_bound(challenger: dict[str, Any], other: dict[str, Any],
                     policy: PromotionPolicy) -> float | None:
    """The ``policy.confidence`` one-sided lower bound of the challenger's gain over
    ``other`` (the champion, or a trivial predictor), by a paired bootstrap over the same
    test examples (both resampled with the same indices). None when the reports lack
    examples, are not on the same labels, or the metric has no per-sample form here (R2)."""
    a, b = challenger.get("examples"), other.get("examples")
    if policy.metric not in ("accuracy", "macro_f1", "mae", "rmse") or not _paired(a, b):
        return None
    y_true = np.asarray(a["y_true"])
    mine, theirs = np.asarray(a["y_pred"]), np.asarray(b["y_pred"])
    n_classes = len(challenger.get("classes") or []) or int(y_true.max()) + 1
    rng = np.random.default_rng(0)  # the same decision for the same reports
    gains = np.empty(policy.bootstrap_samples)
    for k in range(policy.bootstrap_samples):
        idx = rng.integers(0, len(y_true), len(y_true))
        gains[k] = policy.gain(sample_metric(policy.metric, y_true[idx], mine[idx], n_classes),
                               sample_metric(policy.metric, y_true[idx], theirs[idx], n_classes))
    return float(np.quantile(gains, 1.0 - policy.confidence))


def r2_against_mean(report: dict[str, Any], policy: PromotionPolicy
                    ) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """Per target, R2 against the ``mean`` trivial predictor on the test rows and its
    ``policy.confidence`` lower bound by a paired bootstrap; ``(None, None)`` without the
    examples of both."""
    examples = report.get("examples")
    mean = (report.get("trivial") or {}).get("mean", {}).get("examples")
    if not _paired(examples, mean):
        return None, None
    k = len(report["per_target"])
    y = np.asarray(examples["y_true"], dtype=float).reshape(-1, k)
    p = np.asarray(examples["y_pred"], dtype=float).reshape(-1, k)
    c = np.asarray(mean["y_pred"], dtype=float).reshape(-1, k)
    se_model, se_mean = (y - p) ** 2, (y - c) ** 2

    def skill(model: np.ndarray, constant: np.ndarray) -> np.ndarray:
        return np.where(constant > 0, 1.0 - model / np.where(constant > 0, constant, 1.0), 0.0)

    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(y), (policy.bootstrap_samples, len(y)))
    # the resampled gain in squared error, over the whole split's SSE of the mean: R2's
    # scale, the gain's sign, and no ratio of two near-zero sums on a resample that misses a
    # clamped target's few informative rows
    total = se_mean.sum(axis=0)
    gain = (se_mean[idx] - se_model[idx]).sum(axis=1)
    resampled = np.where(total > 0, gain / np.where(total > 0, total, 1.0), 0.0)
    return (skill(se_model.sum(axis=0), total),
            np.quantile(resampled, 1.0 - policy.confidence, axis=0))
