"""Promote: gates as a pure decision, then the registry alias moves (or not), recorded either way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import get_run_logger, task
from prefect.events import emit_event
from sqlalchemy import select

from oceanml.db import Promotion, session_factory
from oceanml.lineage import flow_run_id
from oceanml.registry import client as mlflow_client
from oceanml.registry import set_champion
from oceanml.settings import get_settings


@dataclass(frozen=True)
class PromotionPolicy:
    metric: str = "macro_f1"
    floor: float = 0.5
    margin: float = 0.01
    max_slice_drop: float = 0.10


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
    value = challenger["overall"][policy.metric]
    if value < policy.floor:
        return Decision(False, f"{policy.metric} {value:.3f} is below the floor {policy.floor:.3f}")
    if champion is None:
        return Decision(True, f"no champion yet; {policy.metric} {value:.3f} passes the floor "
                              f"{policy.floor:.3f}")
    best = champion["overall"][policy.metric]
    if value < best + policy.margin:
        return Decision(False, f"{policy.metric} {value:.3f} does not beat the champion's "
                               f"{best:.3f} by the margin {policy.margin:.3f}")
    for name, ref in champion.get("slices", {}).items():
        mine = challenger.get("slices", {}).get(name)
        if mine is not None and ref[policy.metric] - mine[policy.metric] > policy.max_slice_drop:
            return Decision(False, f"slice {name} regresses {ref[policy.metric]:.3f} -> "
                                   f"{mine[policy.metric]:.3f} (more than {policy.max_slice_drop:.2f})")
    return Decision(True, f"{policy.metric} {value:.3f} beats the champion's {best:.3f} by "
                          f"{value - best:.3f} with no slice regressing past "
                          f"{policy.max_slice_drop:.2f}")


def load_policy(params_file: Path) -> PromotionPolicy:
    return PromotionPolicy(**(yaml.safe_load(params_file.read_text()).get("promote") or {}))


@task(name="promote", retries=1, retry_delay_seconds=10)
def promote_task(model: str, evaluation: dict[str, Any]) -> dict[str, Any]:
    """Decide on the evaluation, move ``champion`` if the gates pass, record the decision."""
    settings = get_settings()
    sessions = session_factory(settings.db_url)
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
        decision = decide_promotion(evaluation["challenger"], evaluation.get("champion"),
                                    load_policy(settings.project_dir.resolve() / "params.yaml"))
        mlc = mlflow_client(settings)
        mlc.set_model_version_tag(model, challenger_v, "promotion",
                                     "promoted" if decision.promote else "rejected")
        mlc.set_model_version_tag(model, challenger_v, "promotion_reason", decision.reason)
        if decision.promote:
            set_champion(mlc, model, challenger_v)
        session.add(Promotion(model_name=model, challenger_version=challenger_v,
                              champion_version=champ_v, promoted=decision.promote,
                              reason=decision.reason, flow_run_id=flow_run_id()))
        session.commit()
    if decision.promote:
        emit_event(event="oceanml.model.promoted",
                   resource={"prefect.resource.id": f"oceanml.model.{model}"},
                   payload={"version": challenger_v, "previous": champ_v or None,
                            "reason": decision.reason})
    get_run_logger().info("promote: %s (%s)", decision.promote, decision.reason)
    return {"promoted": decision.promote, "reason": decision.reason, "decided_now": True,
            "champion_version": challenger_v if decision.promote else champ_v}
