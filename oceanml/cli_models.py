"""``oceanml models``: read, challenge and undo which version serves.

The champion history in the metadata DB is the source of truth; each command that reads it
first lets the MLflow alias catch up (:func:`core.champion_history.sync_alias`). Every
command takes ``--json`` for scripts; a refused promotion exits 1 with the reason.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

import typer

from oceanml.cli_common import JsonFlag, context, emit, guarded, model_name, who
from oceanml.cli_release import app as release_app

if TYPE_CHECKING:
    from tasks.results import EvaluationResult, PromotionResult

app = typer.Typer(help="Champions, versions and decisions; promote by hand and roll back.",
                  no_args_is_help=True)
app.add_typer(release_app, name="release")
def _change(c: Any) -> dict[str, Any]:
    return {"version": c.version, "previous_version": c.previous_version, "action": c.action,
            "forced": c.forced, "reason": c.reason, "decided_by": c.decided_by,
            "at": c.created_at.isoformat()}


@app.command("list")
def list_models(as_json: JsonFlag = False) -> None:
    """Every model: champion, previous champion, versions, last decision."""
    from sqlalchemy import select

    from core.champion_history import current_champion, head, sync_alias
    from core.records import DecisionRecord
    from models.zoo import ZOO
    from tasks.champion import decision_dict

    _, sessions, mlc = context()
    out = []
    for name in ZOO:
        current_champion(sessions, mlc, name)  # adopts an alias older than the history
        sync_alias(mlc, sessions, name)
        with sessions() as s:
            latest = head(s, name)
            decision = s.scalar(select(DecisionRecord).where(DecisionRecord.model_name == name)
                                .order_by(DecisionRecord.id.desc()).limit(1))
        versions = mlc.search_model_versions(f"name = '{name}'")
        out.append({"name": name, "champion": latest.version if latest else None,
                    "previous": latest.previous_version if latest else None,
                    "versions": sorted(int(v.version) for v in versions),
                    "last_decision": decision_dict(decision) if decision else None})
    emit(out, as_json, [
        f"{m['name']:20} champion {('v' + m['champion']) if m['champion'] else '-':6} "
        f"previous {('v' + m['previous']) if m['previous'] else '-':6} "
        f"versions {len(m['versions'])}"
        + (f"  last: {m['last_decision']['action']} v{m['last_decision']['candidate']} "
           f"{'promoted' if m['last_decision']['promoted'] else 'refused'}: "
           f"{m['last_decision']['reason']}" if m["last_decision"] else "")
        for m in out])


@app.command()
def show(name: str, as_json: JsonFlag = False) -> None:
    """Versions of NAME with their lineage and the decisions taken on them."""
    from sqlalchemy import select

    from core.champion_history import current_champion
    from core.records import DecisionRecord, PerformanceEstimate
    from tasks.champion import decision_dict

    _, sessions, mlc = context()
    name = model_name(name)
    champion = current_champion(sessions, mlc, name)
    with sessions() as s:
        decisions = [decision_dict(d) for d in s.scalars(
            select(DecisionRecord).where(DecisionRecord.model_name == name)
            .order_by(DecisionRecord.id))]
        estimates = [_estimate(e) for e in s.scalars(
            select(PerformanceEstimate).where(PerformanceEstimate.model_name == name)
            .order_by(PerformanceEstimate.id.desc()).limit(ESTIMATES_SHOWN))][::-1]
    versions = []
    for v in sorted(mlc.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)):
        tags = v.tags or {}
        versions.append({
            "version": str(v.version), "champion": str(v.version) == champion,
            "dataset_version": tags.get("dataset_version"), "git_commit": tags.get("git_commit"),
            "prefect_flow_run_id": tags.get("prefect_flow_run_id"), "run_id": v.run_id,
            "promotion": tags.get("promotion"),
            "decisions": [d for d in decisions if d["candidate"] == str(v.version)],
            "estimates": [e for e in estimates if e["version"] == str(v.version)]})
    emit({"name": name, "champion": champion, "versions": versions}, as_json, [
        f"v{v['version']:4}{' (champion)' if v['champion'] else '':12} dataset "
        f"{v['dataset_version'] or '-'} commit {(v['git_commit'] or '-')[:12]} "
        f"{v['promotion'] or ''}"
        + "".join(f"\n      {d['action']} vs v{d['champion'] or '-'}: "
                  f"{'promoted' if d['promoted'] else 'refused'}: {d['reason']}"
                  for d in v["decisions"])
        + "".join(f"\n      {_estimate_line(e)}" for e in v["estimates"])
        for v in versions])


ESTIMATES_SHOWN = 10  # the latest windows' estimates


def _estimate(e: Any) -> dict[str, Any]:
    return {"version": e.model_version, "window_since": e.window_since.isoformat(),
            "window_until": e.window_until.isoformat(), "n": e.n, "metric": e.metric,
            "estimated": e.estimated, "test": e.test_value, "drop": e.drop,
            "drifted": e.drifted, "realized": e.realized}


def _estimate_line(e: dict[str, Any]) -> str:
    """``window to 2026-12-03T00:00 (240): estimated accuracy 0.851 [0.80, 0.89], test 0.870,
    realized 0.840 (120 labelled)``."""
    est = e["estimated"][e["metric"]]
    realized = e["realized"]
    return (f"window to {e['window_until'][:16]} ({e['n']}): estimated {e['metric']} "
            f"{est['estimate']:.3f} [{est['low']:.3f}, {est['high']:.3f}], test "
            + (f"{e['test']:.3f}" if e["test"] is not None else "-")
            + (f", realized {realized[e['metric']]:.3f} ({realized['n']} labelled)"
               if realized else ", not labelled yet")
            + (" PERFORMANCE DRIFT" if e["drifted"] else ""))


@app.command("history")
def history_cmd(name: str, as_json: JsonFlag = False) -> None:
    """Every change of NAME's champion: when, to what, by what, why."""
    from core.champion_history import current_champion, history

    _, sessions, mlc = context()
    name = model_name(name)
    current_champion(sessions, mlc, name)
    with sessions() as s:
        changes = [_change(c) for c in history(s, name)]
    emit(changes, as_json, [
        f"{c['at'][:19]} {c['action']:8} v{c['previous_version'] or '-'} -> v{c['version']}"
        f"{' (forced)' if c['forced'] else ''} by {c['decided_by']}: {c['reason']}"
        for c in changes] or [f"{name} has had no champion"])


@app.command()
def promote(
    name: str,
    version: str,
    force: Annotated[bool, typer.Option(help="Skip the gates (recorded as forced).")] = False,
    reason: Annotated[str, typer.Option(help="Why; required with --force.")] = "",
    as_json: JsonFlag = False,
) -> None:
    """Make VERSION champion if it passes the gates (at once with --force, recorded as forced).

    The gates compare it with the current champion on the test split of its own dataset."""
    from tasks.champion import PROMOTED_EVENT

    settings, sessions, mlc = context()
    name = model_name(name)
    if force:
        if not reason:
            raise typer.BadParameter("--force needs --reason: the history keeps it")
        result = guarded(lambda: _force(sessions, mlc, name, version, reason))
        _announce(PROMOTED_EVENT, result)
        emit(result, as_json, [f"{name} v{version} is champion (forced): {reason}"])
        return
    result = guarded(lambda: _gated(settings, sessions, mlc, name, version))
    if result.promoted and result.decided_now:
        _announce(PROMOTED_EVENT, {"model": name, "version": version,
                                   "previous_version": result.previous_version,
                                   "reason": result.reason})
    emit({"model": name, "version": version, **asdict(result)}, as_json,
          [f"{name} v{version}: {'PROMOTED' if result.promoted else 'refused'} - "
           f"{result.reason}"])
    if not result.promoted:
        raise typer.Exit(1)


@app.command()
def rollback(
    name: str,
    to: Annotated[str | None, typer.Option(help="A version that was champion before.")] = None,
    reason: Annotated[str, typer.Option(help="Why.")] = "rolled back by hand",
    as_json: JsonFlag = False,
) -> None:
    """Back to the previous champion, or to --to VERSION if it was champion before."""
    from tasks.champion import ROLLED_BACK_EVENT
    from tasks.champion import rollback as do_rollback

    _, sessions, mlc = context()
    name = model_name(name)
    result = guarded(lambda: do_rollback(sessions, mlc, name, to, reason, who()))
    _announce(ROLLED_BACK_EVENT, result)
    emit(result, as_json, [f"{name}: v{result['previous_version']} -> v{result['version']} "
                            f"(rollback): {reason}"])


def _force(sessions: Any, mlc: Any, name: str, version: str, reason: str) -> dict[str, Any]:
    from tasks.champion import force_promote

    return force_promote(sessions, mlc, name, version, reason, who())


def _gated(settings: Any, sessions: Any, mlc: Any, name: str, version: str
           ) -> PromotionResult:
    """Evaluate VERSION against the champion on its dataset's test split, then the gates."""
    from models.zoo import get_spec
    from tasks.dataset import local_dataset
    from tasks.evaluate import CURRENT, evaluate
    from tasks.promote import load_policy
    from tasks.promote import promote as gated_promote

    dataset = (mlc.get_model_version(name, version).tags or {}).get("dataset_version")
    if not dataset:
        raise ValueError(f"{name} v{version} has no dataset_version tag: nothing to evaluate "
                         "it on (use --force with a --reason)")

    def evaluation(champion: Any = CURRENT) -> EvaluationResult:
        return evaluate(sessions, mlc, get_spec(name), dataset, version,
                        lambda: local_dataset(settings, name, dataset), None,
                        champion_version=champion)

    policy = load_policy(settings.project_dir.resolve(), name)
    return gated_promote(sessions, mlc, name, evaluation(), policy, None, reevaluate=evaluation,
                         decided_by=who())


def _announce(event: str, result: dict[str, Any]) -> None:
    """Emit the event where a Prefect API listens; the embedded default has none."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return
    from tasks.champion import emit_champion_event

    emit_champion_event(event, result["model"], result["version"], result["previous_version"],
                        result["reason"])
