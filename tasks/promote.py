"""Promote: gates as a pure decision, then the registry alias moves (or not), recorded either way.

:func:`decide_promotion` is the pure decision; :func:`promote` is the stage's logic (reuse a
recorded decision or decide, tag the version, move the alias, record); :func:`promote_task`
wraps it with what needs a Prefect run (the event and the run log).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from prefect import task
from prefect.events import emit_event
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from oceanml import lineage
from oceanml.db import Promotion, session_factory
from oceanml.logs import stage_logger
from oceanml.registry import client as mlflow_client
from oceanml.registry import set_champion
from oceanml.settings import get_settings

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


PROMOTED_EVENT = "oceanml.model.promoted"


@dataclass(frozen=True)
class PromotionPolicy:
    metric: str = "macro_f1"
    higher_is_better: bool = True
    floor: float = 0.5  # for a lower-is-better metric, the worst value allowed
    margin: float = 0.01
    max_slice_drop: float = 0.10

    def gain(self, new: float, old: float) -> float:
        """How much better ``new`` is than ``old`` (negative when worse), in either direction."""
        return new - old if self.higher_is_better else old - new


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide_promotion(
    challenger: dict[str, Any], champion: dict[str, Any] | None, policy: PromotionPolicy
) -> Decision:
    """Floor, then improvement over the champion by a margin, then no slice regressing too far.

    ``challenger`` / ``champion`` are evaluation reports (``overall`` and ``slices``) on the
    same test split.
    """
    m = policy.metric
    value = challenger["overall"][m]
    if policy.gain(value, policy.floor) < 0:
        side = "below the floor" if policy.higher_is_better else "above the ceiling"
        return Decision(False, f"{m} {value:.3f} is {side} {policy.floor:.3f}")
    if champion is None:
        return Decision(True, f"no champion yet; {m} {value:.3f} passes the bar {policy.floor:.3f}")
    best = champion["overall"][m]
    if policy.gain(value, best) < policy.margin:
        return Decision(False, f"{m} {value:.3f} does not beat the champion's {best:.3f} by the "
                               f"margin {policy.margin:.3f}")
    for name, ref in champion.get("slices", {}).items():
        mine = challenger.get("slices", {}).get(name)
        if mine is not None and -policy.gain(mine[m], ref[m]) > policy.max_slice_drop:
            return Decision(False, f"slice {name} regresses {ref[m]:.3f} -> {mine[m]:.3f} "
                                   f"(more than {policy.max_slice_drop:.2f})")
    return Decision(True, f"{m} {value:.3f} beats the champion's {best:.3f} by "
                          f"{policy.gain(value, best):.3f} with no slice regressing past "
                          f"{policy.max_slice_drop:.2f}")


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
) -> dict[str, Any]:
    """Decide on ``evaluation`` (an :func:`tasks.evaluate.evaluate` result) once, and record it.

    A decision is identified by (model, challenger version, champion version): when the DB
    holds one, it is returned with ``decided_now`` False and the registry is not touched, so
    a re-run or a retry cannot move the alias twice or rewrite the reason. A challenger that
    already is the champion needs no decision and records none. Otherwise the challenger's
    version gets the tags ``promotion`` (``promoted`` / ``rejected``) and
    ``promotion_reason``, ``champion`` moves to it if the gates pass (the old champion keeps
    ``previous-champion``), and a ``Promotion`` row records the decision either way.

    Returns:
        ``promoted``, ``reason``, ``decided_now`` and ``champion_version`` (the champion after
        the decision; "" before any).
    """
    challenger_v = evaluation["model_version"]
    champ_v = evaluation.get("champion_version") or ""
    if champ_v == challenger_v:
        return {"promoted": False, "reason": f"v{challenger_v} is already the champion",
                "decided_now": False, "champion_version": champ_v}
    key = (Promotion.model_name == model, Promotion.challenger_version == challenger_v,
           Promotion.champion_version == champ_v)
    with sessions() as session:
        row = session.scalar(select(Promotion).where(*key))
        if row is not None:
            return {"promoted": row.promoted, "reason": row.reason, "decided_now": False,
                    "champion_version": challenger_v if row.promoted else champ_v}
        decision = decide_promotion(evaluation["challenger"], evaluation.get("champion"), policy)
        mlc.set_model_version_tag(model, challenger_v, "promotion",
                                  "promoted" if decision.promote else "rejected")
        mlc.set_model_version_tag(model, challenger_v, "promotion_reason", decision.reason)
        if decision.promote:
            set_champion(mlc, model, challenger_v)
        session.add(Promotion(model_name=model, challenger_version=challenger_v,
                              champion_version=champ_v, promoted=decision.promote,
                              reason=decision.reason, flow_run_id=flow_run_id))
        session.commit()
    return {"promoted": decision.promote, "reason": decision.reason, "decided_now": True,
            "champion_version": challenger_v if decision.promote else champ_v}


@task(name="promote", retries=1, retry_delay_seconds=10)
def promote_task(model: str, evaluation: dict[str, Any]) -> dict[str, Any]:
    """Decide on the evaluation, move ``champion`` if the gates pass, record the decision.

    :func:`promote` does the work; this wrapper reads the policy from ``params.yaml`` and
    emits ``oceanml.model.promoted`` when the alias moved in this call (a reused decision
    emits nothing: its event went out when it was made).
    """
    settings = get_settings()
    policy = load_policy(settings.project_dir.resolve() / "params.yaml", model)
    result = promote(session_factory(settings.db_url), mlflow_client(settings), model,
                     evaluation, policy, lineage.flow_run_id())
    if result["decided_now"] and result["promoted"]:
        emit_event(event=PROMOTED_EVENT,
                   resource={"prefect.resource.id": f"oceanml.model.{model}",
                             "prefect.resource.name": model},
                   payload={"version": evaluation["model_version"],
                            "previous": evaluation.get("champion_version") or None,
                            "reason": result["reason"]})
    stage_logger("promote").info("promote: %s (%s)%s", result["promoted"], result["reason"],
                                 "" if result["decided_now"] else " (no new decision)")
    return result
