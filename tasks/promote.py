"""Promote: gates as a pure decision, then the registry alias moves (or not), recorded either way.

:func:`tasks.gates.decide_promotion` is the pure decision; :func:`promote` is the stage's logic (reuse a
recorded decision or decide, tag the version, move the alias, record); :func:`promote_task`
wraps it with what needs a Prefect run (the event and the run log).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from core import lineage
from core.champion_history import (
    current_champion,
    model_lock,
    record_change,
    sync_alias,
)
from core.database import session_factory
from core.logs import stage_logger
from core.params import load_file
from core.records import Promotion
from core.registry import client as mlflow_client
from core.settings import get_settings
from models.zoo import get_spec
from tasks.champion import (
    PROMOTED_EVENT,
    decision_dict,
    emit_champion_event,
    record_decision,
    tag_decision,
)
from tasks.dataset import local_dataset
from tasks.evaluate import evaluate
from tasks.gates import PromotionPolicy, decide_promotion
from tasks.results import EvaluationResult, PromotionResult

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


def load_policy(project_dir: Path, model: str) -> PromotionPolicy:
    """The ``promote`` defaults of the project's ``params.yaml`` with ``model``'s
    ``per_model`` overrides, the whole file checked first (a misspelt gate in any model's
    entry is named on the first run, not when that model is promoted)."""
    return load_file(project_dir).promote.policy(model)


def promote(
    sessions: sessionmaker,
    mlc: MlflowClient,
    model: str,
    evaluation: EvaluationResult,
    policy: PromotionPolicy,
    flow_run_id: str | None,
    *,
    reevaluate: Callable[[str | None], EvaluationResult] | None = None,
    decided_by: str | None = None,
) -> PromotionResult:
    """Decide on ``evaluation`` (an :func:`tasks.evaluate.evaluate` result) once, and record it.

    Everything happens under the model's lock (:func:`core.champion_history.model_lock`),
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
    (:func:`core.champion_history.sync_alias`: ``champion`` moves to it, the old one keeps
    ``previous-champion``).
    """
    challenger_v = evaluation.model_version
    with model_lock(sessions, model):
        sync_alias(mlc, sessions, model)  # repairs a change whose alias move was cut short
        champ_v = current_champion(sessions, mlc, model) or ""
        asked = evaluation.champion_version or ""
        recorded = recorded_decision(sessions, model, challenger_v, asked)
        if recorded is None and champ_v == challenger_v:
            return PromotionResult(False, f"v{challenger_v} is already the champion",
                                   decided_now=False, champion_version=champ_v,
                                   previous_version=champ_v)
        if recorded is None and champ_v != asked:
            if reevaluate is None:
                raise RuntimeError(f"{model}: the champion is v{champ_v or ' none'}, but the "
                                   f"evaluation was made against v{asked or ' none'}")
            evaluation, asked = reevaluate(champ_v or None), champ_v
            recorded = recorded_decision(sessions, model, challenger_v, asked)
        if recorded is not None:
            return PromotionResult(recorded.promoted, recorded.reason, decided_now=False,
                                   champion_version=champ_v, previous_version=asked)
        decision = decide_promotion(evaluation.challenger, evaluation.champion, policy)
        who = decided_by or f"flow-run:{flow_run_id or '-'}"
        with sessions() as session:
            session.add(Promotion(model_name=model, challenger_version=challenger_v,
                                  champion_version=champ_v, promoted=decision.promote,
                                  reason=decision.reason, flow_run_id=flow_run_id))
            record = record_decision(session, model, challenger_v, champ_v or None,
                                     evaluation.dataset_version, "gate",
                                     decision.promote, decision.reason, who,
                                     checks=decision.checks, interval=decision.interval)
            if decision.promote:
                record_change(session, model, challenger_v, champ_v or None, "promote",
                              decision.reason, decided_by=who)
            session.commit()
        tag_decision(mlc, record, "promoted" if decision.promote else "rejected")
        sync_alias(mlc, sessions, model)
    return PromotionResult(decision.promote, decision.reason, decided_now=True,
                           champion_version=challenger_v if decision.promote else champ_v,
                           previous_version=champ_v, decision=decision_dict(record))


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
    interval = dict(decision.get("interval") or {})
    lines += trivial_table(interval.pop("trivial", None) or [])
    if interval:
        lines += ["", "Gain over the champion: " + ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in interval.items())]
    return "\n".join(lines)


def trivial_table(figures: list[dict[str, Any]]) -> list[str]:
    """The trivial predictors' figures on the candidate's test split, and the candidate's
    gain over each on the gated metric (with its lower bound where bootstrapped)."""
    if not figures:
        return []
    metrics = [k for k in figures[0] if k not in ("name", "gated", "gain", "lower_bound")]
    lines = ["", "Trivial predictors on the same test split (fit on its train split):", "",
             "| predictor | " + " | ".join(metrics) + " | gain | lower bound |",
             "|---|" + "---|" * (len(metrics) + 2)]
    for f in figures:
        cells = [f"{f[k]:.3f}" if isinstance(f.get(k), float) else "-" for k in metrics]
        gain = f"{f['gain']:+.3f}" if "gain" in f else "-"
        low = f"{f['lower_bound']:+.3f}" if "lower_bound" in f else "-"
        lines.append(f"| {f['name']} | " + " | ".join(cells) + f" | {gain} | {low} |")
    return lines


def recorded_decision(sessions: sessionmaker, model: str, challenger: str, champion: str
                      ) -> Promotion | None:
    """The decision already made on ``challenger`` against ``champion``, if any."""
    with sessions() as session:
        return session.scalar(select(Promotion).where(
            Promotion.model_name == model, Promotion.challenger_version == challenger,
            Promotion.champion_version == champion))


@task(name="promote", retries=1, retry_delay_seconds=10, timeout_seconds=2 * 3600)
def promote_task(model: str, evaluation: EvaluationResult) -> PromotionResult:
    """Decide on the evaluation, move ``champion`` if the gates pass, record the decision.

    :func:`promote` does the work; this wrapper reads the policy from ``params.yaml`` and
    emits ``oceanml.model.promoted`` when the alias moved in this call (a reused decision
    emits nothing: its event went out when it was made).
    """
    settings = get_settings()
    sessions, mlc = session_factory(settings.db_url), mlflow_client(settings)
    policy = load_policy(settings.project_dir.resolve(), model)
    dataset = evaluation.dataset_version

    def reevaluate(champion: str | None) -> EvaluationResult:
        return evaluate(sessions, mlc, get_spec(model), dataset, evaluation.model_version,
                        lambda: local_dataset(settings, model, dataset), lineage.flow_run_id(),
                        champion_version=champion)

    result = promote(sessions, mlc, model, evaluation, policy, lineage.flow_run_id(),
                     reevaluate=reevaluate)
    if result.decided_now and result.promoted:
        emit_champion_event(PROMOTED_EVENT, model, evaluation.model_version,
                            result.previous_version, result.reason)
    if result.decision:
        create_markdown_artifact(decision_markdown(result.decision), key=f"decision-{model}",
                                 description="the promotion decision and every check")
    stage_logger("promote").info("promote: %s (%s)%s", result.promoted, result.reason,
                                 "" if result.decided_now else " (no new decision)")
    return result
