"""Promote: gates as a pure decision, then the registry alias moves (or not), recorded either way.

:func:`decide_promotion` is the pure decision; :func:`promote` is the stage's logic (reuse a
recorded decision or decide, tag the version, move the alias, record); :func:`promote_task`
wraps it with what needs a Prefect run (the event and the run log).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from oceanml import lineage
from oceanml.champion_history import (
    current_champion,
    history,
    model_lock,
    record_change,
    sync_alias,
)
from oceanml.db import ChampionChange, DecisionRecord, Promotion, session_factory
from oceanml.logs import stage_logger
from oceanml.registry import client as mlflow_client
from oceanml.settings import get_settings

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


PROMOTED_EVENT = "oceanml.model.promoted"
ROLLED_BACK_EVENT = "oceanml.model.rolled_back"


@dataclass(frozen=True)
class PromotionPolicy:
    metric: str = "macro_f1"
    higher_is_better: bool = True
    floor: float = 0.5  # for a lower-is-better metric, the worst value allowed
    margin: float = 0.01
    max_slice_drop: float = 0.10
    confidence: float = 0.9  # the gain must clear the margin at this one-sided confidence
    bootstrap_samples: int = 2000

    def gain(self, new: float, old: float) -> float:
        """How much better ``new`` is than ``old`` (negative when worse), in either direction."""
        return new - old if self.higher_is_better else old - new


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
    interval: dict[str, float] | None = None  # point gain and its lower bound, when measured


def decide_promotion(
    challenger: dict[str, Any], champion: dict[str, Any] | None, policy: PromotionPolicy
) -> Decision:
    """Floor, then a gain over the champion that clears the margin, then no slice regressing
    too far. Every gate is checked and kept in ``checks`` (for the decision record); the
    reason is the first that failed, or why it passed.

    ``challenger`` / ``champion`` are evaluation reports (``overall``, ``slices`` and, from
    :func:`tasks.evaluate.report_for`, the per-example ``examples``) on the same test split.
    With the examples, the gain must exceed the margin at ``policy.confidence``: the lower
    bound of a paired bootstrap of the challenger-minus-champion difference
    (:func:`gain_lower_bound`), so a gain inside the noise of a small split is no gain. Reports
    without examples (recorded before they were kept) are judged on the point gain.
    """
    m = policy.metric
    value = challenger["overall"][m]
    side = "below the floor" if policy.higher_is_better else "above the ceiling"
    floor = Check("floor", value, policy.floor, policy.gain(value, policy.floor) >= 0,
                  f"{m} {value:.3f} is {side} {policy.floor:.3f}")
    if champion is None:
        reason = (f"no champion yet; {m} {value:.3f} passes the bar {policy.floor:.3f}"
                  if floor.passed else floor.detail)
        return Decision(floor.passed, reason, (floor,))
    best = champion["overall"][m]
    gain = policy.gain(value, best)
    low = gain_lower_bound(challenger, champion, policy)
    if low is None:
        margin = Check("gain", gain, policy.margin, gain >= policy.margin,
                       f"{m} {value:.3f} does not beat the champion's {best:.3f} by the "
                       f"margin {policy.margin:.3f}")
    else:
        margin = Check("gain_lower_bound", low, policy.margin, low > policy.margin,
                       f"{m} {value:.3f} against the champion's {best:.3f}: gain {gain:.3f}, "
                       f"{policy.confidence:.0%} lower bound {low:.3f} does not clear the "
                       f"margin {policy.margin:.3f}")
    slices = [Check(f"slice {name}", -policy.gain(mine[m], ref[m]), policy.max_slice_drop,
                    -policy.gain(mine[m], ref[m]) <= policy.max_slice_drop,
                    f"slice {name} regresses {ref[m]:.3f} -> {mine[m]:.3f} "
                    f"(more than {policy.max_slice_drop:.2f})")
              for name, ref in champion.get("slices", {}).items()
              if (mine := challenger.get("slices", {}).get(name)) is not None]
    checks = (floor, margin, *slices)
    interval = ({"gain": gain, "lower_bound": low, "confidence": policy.confidence}
                if low is not None else {"gain": gain})
    failed = next((c for c in checks if not c.passed), None)
    if failed is not None:
        return Decision(False, failed.detail, checks, interval)
    bound = f" ({policy.confidence:.0%} lower bound {low:.3f})" if low is not None else ""
    return Decision(True, f"{m} {value:.3f} beats the champion's {best:.3f} by "
                          f"{gain:.3f}{bound} with no slice regressing past "
                          f"{policy.max_slice_drop:.2f}", checks, interval)


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


def gain_lower_bound(challenger: dict[str, Any], champion: dict[str, Any],
                     policy: PromotionPolicy) -> float | None:
    """The ``policy.confidence`` one-sided lower bound of the challenger's gain over the
    champion, by a paired bootstrap over the same test examples (both models resampled with
    the same indices). None when the reports lack examples, are not on the same labels, or
    the metric has no per-sample form here (R2)."""
    a, b = challenger.get("examples"), champion.get("examples")
    if not a or not b or policy.metric not in ("accuracy", "macro_f1", "mae", "rmse"):
        return None
    y_true = np.asarray(a["y_true"])
    if y_true.shape != np.asarray(b["y_true"]).shape or (y_true != np.asarray(b["y_true"])).any():
        return None  # not the same split: no pairing
    if len(y_true) < 2:
        return None
    mine, theirs = np.asarray(a["y_pred"]), np.asarray(b["y_pred"])
    n_classes = len(challenger.get("classes") or []) or int(y_true.max()) + 1
    rng = np.random.default_rng(0)  # the same decision for the same reports
    gains = np.empty(policy.bootstrap_samples)
    for k in range(policy.bootstrap_samples):
        idx = rng.integers(0, len(y_true), len(y_true))
        gains[k] = policy.gain(sample_metric(policy.metric, y_true[idx], mine[idx], n_classes),
                               sample_metric(policy.metric, y_true[idx], theirs[idx], n_classes))
    return float(np.quantile(gains, 1.0 - policy.confidence))


def load_policy(params_file: Path, model: str) -> PromotionPolicy:
    """The ``promote`` defaults of ``params.yaml`` with the model's ``per_model`` overrides.

    Every key is checked, every model's entry too: a misspelt gate (``flor: 0.9``) stops the
    stage with a message naming the key and its place, not a TypeError from the dataclass, and
    a typo in one model's entry is found on the first run, not when that model is promoted.
    """
    section = dict(yaml.safe_load(params_file.read_text()).get("promote") or {})
    per_model = section.pop("per_model", None) or {}
    known = {f.name for f in fields(PromotionPolicy)}

    def check(values: object, where: str) -> None:
        if not isinstance(values, dict):
            raise ValueError(f"{params_file}: {where} must be a mapping of policy keys")
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{params_file}: {where}: unknown key(s) {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(known))})")

    check(section, "promote")
    if not isinstance(per_model, dict):
        raise ValueError(f"{params_file}: promote.per_model must map model names to overrides")
    for name, overrides in per_model.items():
        check(overrides or {}, f"promote.per_model.{name}")
    return PromotionPolicy(**{**section, **(per_model.get(model) or {})})


def promote(
    sessions: sessionmaker,
    mlc: MlflowClient,
    model: str,
    evaluation: dict[str, Any],
    policy: PromotionPolicy,
    flow_run_id: str | None,
    *,
    reevaluate: Callable[[str | None], dict[str, Any]] | None = None,
    decided_by: str | None = None,
) -> dict[str, Any]:
    """Decide on ``evaluation`` (an :func:`tasks.evaluate.evaluate` result) once, and record it.

    Everything happens under the model's lock (:func:`oceanml.champion_history.model_lock`),
    against the champion read under it: when that is not the champion ``evaluation`` was made
    against (another promotion won meanwhile), ``reevaluate(champion)`` scores the candidate
    against the new champion on the same split first; without it, the stage stops rather than
    decide on a stale comparison.

    A decision is identified by (model, challenger version, champion version): when the DB
    holds one for the evaluation's question, it is returned with ``decided_now`` False and
    nothing moves, so a re-run or a retry cannot move the champion twice or rewrite the
    reason (``champion_version`` is then the champion now). A challenger that already is
    the champion needs no decision and records none. Otherwise a ``promotions`` row records the
    decision either way and, on promotion, a ``champion_history`` change; after the commit the
    version gets the tags ``promotion`` (``promoted`` / ``rejected``) and
    ``promotion_reason``, and the MLflow aliases follow the history
    (:func:`oceanml.champion_history.sync_alias`: ``champion`` moves to it, the old one keeps
    ``previous-champion``).

    Returns:
        ``promoted``, ``reason``, ``decided_now``, ``champion_version`` (the champion after the
        decision; "" before any) and ``previous_version`` (the champion it was decided against).
    """
    challenger_v = evaluation["model_version"]
    with model_lock(sessions, model):
        sync_alias(mlc, sessions, model)  # repairs a change whose alias move was cut short
        champ_v = current_champion(sessions, mlc, model) or ""
        asked = evaluation.get("champion_version") or ""
        recorded = recorded_decision(sessions, model, challenger_v, asked)
        if recorded is None and champ_v == challenger_v:
            return {"promoted": False, "reason": f"v{challenger_v} is already the champion",
                    "decided_now": False, "champion_version": champ_v,
                    "previous_version": champ_v}
        if recorded is None and champ_v != asked:
            if reevaluate is None:
                raise RuntimeError(f"{model}: the champion is v{champ_v or ' none'}, but the "
                                   f"evaluation was made against v{asked or ' none'}")
            evaluation, asked = reevaluate(champ_v or None), champ_v
            recorded = recorded_decision(sessions, model, challenger_v, asked)
        if recorded is not None:
            return {"promoted": recorded.promoted, "reason": recorded.reason,
                    "decided_now": False, "champion_version": champ_v,
                    "previous_version": asked}
        decision = decide_promotion(evaluation["challenger"], evaluation.get("champion"), policy)
        who = decided_by or f"flow-run:{flow_run_id or '-'}"
        with sessions() as session:
            session.add(Promotion(model_name=model, challenger_version=challenger_v,
                                  champion_version=champ_v, promoted=decision.promote,
                                  reason=decision.reason, flow_run_id=flow_run_id))
            record = record_decision(session, model, challenger_v, champ_v or None,
                                     evaluation.get("dataset_version"), "gate",
                                     decision.promote, decision.reason, who,
                                     checks=decision.checks, interval=decision.interval)
            if decision.promote:
                record_change(session, model, challenger_v, champ_v or None, "promote",
                              decision.reason, decided_by=who)
            session.commit()
        tag_decision(mlc, record, "promoted" if decision.promote else "rejected")
        sync_alias(mlc, sessions, model)
    return {"promoted": decision.promote, "reason": decision.reason, "decided_now": True,
            "champion_version": challenger_v if decision.promote else champ_v,
            "previous_version": champ_v, "decision": decision_dict(record)}


def record_decision(session: Any, model: str, candidate: str, champion: str | None,
                    dataset: str | None, action: str, promoted: bool, reason: str,
                    decided_by: str, *, forced: bool = False, checks: tuple[Check, ...] = (),
                    interval: dict[str, float] | None = None) -> DecisionRecord:
    """Add the decision record (committed with the caller's transaction)."""
    record = DecisionRecord(model_name=model, candidate_version=candidate,
                            champion_version=champion, dataset_version=dataset, action=action,
                            promoted=promoted, forced=forced, reason=reason,
                            decided_by=decided_by, checks=[asdict(c) for c in checks],
                            interval=interval)
    session.add(record)
    session.flush()  # the id, for the version's tag
    return record


def decision_dict(record: DecisionRecord) -> dict[str, Any]:
    return {"id": record.id, "model": record.model_name, "candidate": record.candidate_version,
            "champion": record.champion_version, "dataset_version": record.dataset_version,
            "action": record.action, "promoted": record.promoted, "forced": record.forced,
            "checks": record.checks, "interval": record.interval, "reason": record.reason,
            "decided_by": record.decided_by,
            "at": record.created_at.isoformat() if record.created_at else None}


def tag_decision(mlc: MlflowClient, record: DecisionRecord, verdict: str) -> None:
    """The decision on the candidate version's tags: verdict, reason, record id and checks."""
    name, version = record.model_name, record.candidate_version
    checks = "; ".join(f"{c['name']} {'pass' if c['passed'] else 'FAIL'}" for c in record.checks)
    for key, value in (("promotion", verdict), ("promotion_reason", record.reason),
                       ("decision_id", str(record.id)), ("decision_checks", checks[:4900]),
                       ("decided_by", record.decided_by)):
        mlc.set_model_version_tag(name, version, key, value)


def decision_markdown(decision: dict[str, Any]) -> str:
    """The decision record as the Prefect artifact shows it: one row per check."""
    champion = f"v{decision['champion']}" if decision["champion"] else "none"
    verdict = "PROMOTED" if decision["promoted"] else "refused"
    lines = [f"# Decision {decision['id']}: `{decision['model']}` v{decision['candidate']} "
             f"against {champion}: {verdict}",
             f"{decision['action']}{' (forced)' if decision['forced'] else ''} by "
             f"{decision['decided_by']}, dataset `{decision['dataset_version'] or '-'}`", "",
             decision["reason"], "", "| check | value | threshold | result |", "|---|---|---|---|"]
    for c in decision["checks"]:
        value = "-" if c["value"] is None else f"{c['value']:.4f}"
        bar = "-" if c["threshold"] is None else f"{c['threshold']:.4f}"
        lines.append(f"| {c['name']} | {value} | {bar} | {'pass' if c['passed'] else 'FAIL'} |")
    if decision.get("interval"):
        lines += ["", "Gain over the champion: " + ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in decision["interval"].items())]
    return "\n".join(lines)


def recorded_decision(sessions: sessionmaker, model: str, challenger: str, champion: str
                      ) -> Promotion | None:
    """The decision already made on ``challenger`` against ``champion``, if any."""
    with sessions() as session:
        return session.scalar(select(Promotion).where(
            Promotion.model_name == model, Promotion.challenger_version == challenger,
            Promotion.champion_version == champion))


def change_champion(
    sessions: sessionmaker,
    mlc: MlflowClient,
    model: str,
    choose: Callable[[list[ChampionChange]], str],
    *,
    action: str,
    reason: str,
    decided_by: str,
    forced: bool = False,
) -> dict[str, Any]:
    """Make ``choose(history)`` the champion, under the model's lock, without gates: what a
    rollback and a forced promotion do. ``choose`` sees the history read under the lock and
    raises ``ValueError`` (with what to do instead) when the move makes no sense."""
    with model_lock(sessions, model):
        sync_alias(mlc, sessions, model)
        current_champion(sessions, mlc, model)  # adopts a pre-history alias
        with sessions() as session:
            changes = history(session, model)
            version = choose(changes)
            previous = changes[-1].version if changes else None
            record_change(session, model, version, previous, action, reason, decided_by,
                          forced)
            record = record_decision(
                session, model, version, previous,
                (mlc.get_model_version(model, version).tags or {}).get("dataset_version"),
                "force" if forced else action, True, reason, decided_by, forced=forced)
            session.commit()
        sync_alias(mlc, sessions, model)
    return {"model": model, "version": version, "previous_version": previous,
            "action": action, "reason": reason, "forced": forced, "decided_by": decided_by,
            "decision": decision_dict(record)}


def rollback(sessions: sessionmaker, mlc: MlflowClient, model: str, to: str | None,
             reason: str, decided_by: str) -> dict[str, Any]:
    """Back to the champion before the current one, or to ``to`` if it was champion before."""
    def choose(changes: list[ChampionChange]) -> str:
        if not changes:
            raise ValueError(f"{model} has no champion to roll back from")
        current = changes[-1].version
        if to is None:
            if not changes[-1].previous_version:
                raise ValueError(f"{model} v{current} is its first champion: nothing to roll "
                                 "back to (promote a version with --force instead)")
            return changes[-1].previous_version
        if to == current:
            raise ValueError(f"{model} v{to} is the champion already")
        if to not in {c.version for c in changes}:
            raise ValueError(f"{model} v{to} was never champion: `oceanml models promote` "
                             "runs the gates for a new one")
        return to

    return change_champion(sessions, mlc, model, choose, action="rollback", reason=reason,
                           decided_by=decided_by)


def force_promote(sessions: sessionmaker, mlc: MlflowClient, model: str, version: str,
                  reason: str, decided_by: str) -> dict[str, Any]:
    """Make ``version`` champion without gates, recorded as forced with its reason."""
    mlc.get_model_version(model, version)  # raises for a version the registry does not hold

    def choose(changes: list[ChampionChange]) -> str:
        if changes and changes[-1].version == version:
            raise ValueError(f"{model} v{version} is the champion already")
        return version

    result = change_champion(sessions, mlc, model, choose, action="promote", reason=reason,
                             decided_by=decided_by, forced=True)
    with sessions() as session:
        tag_decision(mlc, session.get(DecisionRecord, result["decision"]["id"]), "forced")
    return result


def emit_champion_event(event: str, model: str, version: str, previous: str | None,
                        reason: str) -> None:
    """``oceanml.model.promoted`` / ``rolled_back``: model, version, previous and reason."""
    emit_event(event=event,
               resource={"prefect.resource.id": f"oceanml.model.{model}",
                         "prefect.resource.name": model},
               payload={"model": model, "version": version, "previous": previous or None,
                        "reason": reason})


@task(name="promote", retries=1, retry_delay_seconds=10, timeout_seconds=2 * 3600)
def promote_task(model: str, evaluation: dict[str, Any]) -> dict[str, Any]:
    """Decide on the evaluation, move ``champion`` if the gates pass, record the decision.

    :func:`promote` does the work; this wrapper reads the policy from ``params.yaml`` and
    emits ``oceanml.model.promoted`` when the alias moved in this call (a reused decision
    emits nothing: its event went out when it was made).
    """
    from models.zoo import get_spec
    from tasks.dataset import local_dataset
    from tasks.evaluate import evaluate

    settings = get_settings()
    sessions, mlc = session_factory(settings.db_url), mlflow_client(settings)
    policy = load_policy(settings.project_dir.resolve() / "params.yaml", model)
    dataset = evaluation["dataset_version"]

    def reevaluate(champion: str | None) -> dict[str, Any]:
        return evaluate(sessions, mlc, get_spec(model), dataset, evaluation["model_version"],
                        lambda: local_dataset(settings, model, dataset), lineage.flow_run_id(),
                        champion_version=champion)

    result = promote(sessions, mlc, model, evaluation, policy, lineage.flow_run_id(),
                     reevaluate=reevaluate)
    if result["decided_now"] and result["promoted"]:
        emit_champion_event(PROMOTED_EVENT, model, evaluation["model_version"],
                            result["previous_version"], result["reason"])
    if result.get("decision"):
        create_markdown_artifact(decision_markdown(result["decision"]), key=f"decision-{model}",
                                 description="the promotion decision and every check")
    stage_logger("promote").info("promote: %s (%s)%s", result["promoted"], result["reason"],
                                 "" if result["decided_now"] else " (no new decision)")
    return result
