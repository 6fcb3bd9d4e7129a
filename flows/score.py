"""Batch scoring: each champion scores the observations it has not scored yet.

In-process by default. With ``OCEANML_SCORE_WORK_POOL`` set, the flow splits each model's work
into observation days and starts one run of the ``score`` deployment (``OCEANML_SCORE_DEPLOYMENT``)
per day, pinned to the champion version it saw, so N workers on that pool score N days at once;
each child run is this flow with ``day`` set, which scores in its own process. The runs show
up as subflows in the UI, and a failed one fails the flow with its name.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment

from core.settings import get_settings
from flows.timeouts import timed
from models.zoo import ZOO
from tasks.score import (
    ScoreResult,
    distribution_task,
    partitions_task,
    score_task,
    scored_by_task,
)

POLL_S = 2.0


@flow(name="score", log_prints=True)
def score(model: str | None = None, version: str | None = None, day: str | None = None,
          last_days: float | None = None) -> dict[str, ScoreResult]:
    """Score every champion's unscored observations (``model`` alone if given), within one
    UTC ``day`` (``YYYY-MM-DD``) or the ``last_days`` when given. ``version`` pins a version
    other than the champion (the fan-out pins its children to the champion it saw)."""
    results = {name: score_step(name, version=version, day=day, last_days=last_days)
               for name in ([model] if model else list(ZOO))}
    versions = {name: r.version for name, r in results.items() if r.version}
    distribution_task(versions)
    for name, r in results.items():
        print(f"score {name}: v{r.version or '-'}: {r.scored} scored"
              f"{', ' + r.reason if r.reason else ''}")
    return results


def score_step(model: str, *, version: str | None = None, day: str | None = None,
               last_days: float | None = None) -> ScoreResult:
    """Score ``model`` in this process, or fan its days out when a score work pool is set."""
    settings = get_settings()
    if not settings.score_work_pool or day is not None:
        return timed(score_task)(model, version=version, day=day, last_days=last_days)
    plan = partitions_task(model, last_days=last_days)
    if plan.version is None or not plan.days:
        return ScoreResult(model, plan.version, reason="no champion yet" if plan.version is None
                           else "nothing to score")
    get_run_logger().info("score %s v%s: %d days to %s on pool %s", model, plan.version,
                          len(plan.days), settings.score_deployment, settings.score_work_pool)
    runs = [run_deployment(settings.score_deployment, timeout=0,
                           parameters={"model": model, "version": plan.version, "day": d})
            for d in plan.days]
    states = wait_for_runs([run.id for run in runs])
    failed = [f"{run.name} ({states[run.id]})" for run in runs if states[run.id] != "COMPLETED"]
    if failed:
        raise RuntimeError(f"score runs did not complete: {', '.join(failed)}: see their logs")
    run_ids = [str(run.id) for run in runs]
    return ScoreResult(model, plan.version, scored=scored_by_task(model, run_ids),
                       days=plan.days, runs=run_ids)


def wait_for_runs(ids: list[Any], poll_s: float = POLL_S) -> dict[Any, str]:
    """Block until every flow run in ``ids`` is final; their final state types by id."""
    from prefect.client.orchestration import get_client

    left, states = set(ids), {}
    with get_client(sync_client=True) as client:
        while left:
            for run_id in list(left):
                state = client.read_flow_run(run_id).state
                if state is not None and state.is_final():
                    states[run_id] = state.type.value
                    left.discard(run_id)
            if left:
                time.sleep(poll_s)
    return states


if __name__ == "__main__":
    score()
