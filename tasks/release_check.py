"""The release check: each open release judged on what the endpoint served, then promoted,
aborted or left to run, and the decision recorded.

For a release it reads the online answers since it started (every replica's), builds what
each version served (:class:`tasks.release_gates.Served`: a shadow's champion side is only
the requests the candidate shadowed, row for row), adds the labels imported for the served
images, and judges (:func:`tasks.release_gates.judge`). A promotion goes through the champion
history like any other, with the checks on its decision record; both endings carry the
figures as the release's evidence, emit ``oceanml.release.*`` and make the
``release-<model>`` Prefect artifact with the per-version table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from prefect import task
from prefect.artifacts import create_markdown_artifact
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core.champion_history import current_champion
from core.database import session_factory
from core.db import Observation
from core.params import load_file
from core.params_schema import ReleasePolicy
from core.registry import client as mlflow_client
from core.releases import Release, open_release, open_releases
from core.settings import get_settings
from models.zoo import ZOO, get_spec
from tasks.champion import PROMOTED_EVENT, emit_champion_event
from tasks.drift_model_view import stored_threshold
from tasks.release import abort_release, emit_release_event, promote_release
from tasks.release_evidence import ReleaseFigures, figures, served_rows
from tasks.release_gates import Served, Verdict, judge

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

DECIDED_BY = "release-check"


@dataclass(frozen=True)
class ReleaseOutcome:
    model: str
    release_id: int
    candidate_version: str
    mode: str
    action: str  # promote | abort | wait
    reason: str
    figures: ReleaseFigures
    checks: tuple[dict[str, Any], ...]


def sides(rows: list[Any], release: Release, outputs: tuple[str, ...],
          labels: dict[str, str], thresholds: dict[str, float | None]
          ) -> tuple[Served, Served]:
    """The champion's and the candidate's :class:`Served` from ``rows``
    (:func:`tasks.release_evidence.served_rows`); ``labels``: the true label per content
    hash; ``thresholds``: each version's ATC threshold."""
    keep = [r for r in rows if r.role in ("champion", release.mode)]
    if release.mode == "shadow":  # the champion's side: the requests shadowed, row for row
        shadowed = {(r.request_id, r.content_hash) for r in keep if r.role == "shadow"}
        keep = sorted((r for r in keep if (r.request_id, r.content_hash) in shadowed),
                      key=lambda r: (r.request_id, r.content_hash or ""))
    index = {c: i for i, c in enumerate(outputs)}

    def served(role: str, version: str) -> Served:
        mine = [r for r in keep if r.role == role and r.model_version == version]
        failed: dict[str, bool] = {}
        latency: dict[str, float] = {}
        for r in mine:
            failed[r.request_id] = failed.get(r.request_id, False) or r.error is not None
            if r.latency_ms is not None:
                latency[r.request_id] = r.latency_ms
        ok = [r for r in mine if r.error is None]
        probabilities = (np.array([[r.probabilities[c] for c in outputs] for r in ok])
                         if ok and all(r.probabilities for r in ok) else None)
        known = [r for r in ok if r.label in index and labels.get(r.content_hash) in index]
        labelled = (np.array([index[labels[r.content_hash]] for r in known]),
                    np.array([index[r.label] for r in known])) if known else None
        return Served(version, role, np.array(list(failed.values()), dtype=bool),
                      np.array([ms for k, ms in latency.items() if not failed[k]]),
                      probabilities, thresholds.get(version), labelled)

    return (served("champion", release.champion_version),
            served(release.mode, release.candidate_version))


def served_labels(session: Session, model: str, hashes: set[str]) -> dict[str, str]:
    """The imported label of ``model`` for each served image that is also an observation."""
    if not hashes:
        return {}
    out = {}
    for content_hash, labels in session.execute(
            select(Observation.content_hash, Observation.labels)
            .where(Observation.content_hash.in_(list(hashes)))):
        if (labels or {}).get(model) is not None:
            out[content_hash] = str(labels[model])
    return out


def evaluate_release(session: Session, mlc: MlflowClient, release: Release,
                     policy: ReleasePolicy, now: datetime) -> tuple[Verdict, ReleaseFigures]:
    """The verdict on ``release`` from what was served up to now, and the figures."""
    rows = served_rows(session, release)
    spec = get_spec(release.model_name)
    labels = served_labels(session, release.model_name,
                           {r.content_hash for r in rows if r.content_hash})
    thresholds = {v: stored_threshold(mlc.get_model_version(release.model_name, v))
                  for v in (release.champion_version, release.candidate_version)}
    champion, candidate = sides(rows, release, tuple(spec.outputs), labels, thresholds)
    deadline = release.deadline if release.deadline.tzinfo else release.deadline.replace(
        tzinfo=UTC)
    verdict = judge(champion, candidate, release.mode, policy, past_deadline=now >= deadline)
    return verdict, figures(release, rows)


def check_release(sessions: sessionmaker, mlc: MlflowClient, model: str,
                  policy: ReleasePolicy, now: datetime | None = None) -> ReleaseOutcome | None:
    """Judge ``model``'s open release and carry the verdict out; None when it has none."""
    now = now or datetime.now(UTC)
    with sessions() as session:
        release = open_release(session, model)
        if release is None:
            return None
        verdict, served = evaluate_release(session, mlc, release, policy, now)
        session.expunge(release)
    evidence = {"figures": served.to_dict(), "checks": [asdict(c) for c in verdict.checks]}
    if verdict.action == "promote" and _champion_moved(sessions, mlc, release):
        verdict = Verdict("abort", "the champion changed during the release "
                          f"(started against v{release.champion_version})", verdict.checks)
    if verdict.action == "promote":
        promote_release(sessions, mlc, model, verdict.reason, DECIDED_BY, forced=False,
                        evidence=evidence, checks=verdict.checks)
    elif verdict.action == "abort":
        abort_release(sessions, model, verdict.reason, DECIDED_BY, forced=False,
                      evidence=evidence)
    return ReleaseOutcome(model, release.id, release.candidate_version, release.mode,
                          verdict.action, verdict.reason, served,
                          tuple(asdict(c) for c in verdict.checks))


def _champion_moved(sessions: sessionmaker, mlc: MlflowClient, release: Release) -> bool:
    return current_champion(sessions, mlc, release.model_name) != release.champion_version


def release_markdown(outcome: ReleaseOutcome) -> str:
    """The ``release-<model>`` artifact: the decision, the checks, the per-version table."""
    lines = [f"# Release {outcome.release_id} of {outcome.model}: "
             f"v{outcome.candidate_version} ({outcome.mode})", "",
             f"**{outcome.action.upper()}**: {outcome.reason}", "",
             "| version | role | requests | failed | error rate | p50 ms | p99 ms |",
             "|---|---|---|---|---|---|---|"]
    for v in outcome.figures.versions:
        lines.append(f"| v{v.version} | {v.role} | {v.requests} | {v.errors} | "
                     f"{v.error_rate:.2%} | {_ms(v.p50_ms)} | {_ms(v.p99_ms)} |")
    if outcome.figures.pairs:
        lines += ["", f"Shadow pairs: {outcome.figures.pairs}, agreement "
                      f"{outcome.figures.agreement:.1%}."]
    lines += ["", "| check | value | bar | passed | detail |", "|---|---|---|---|---|"]
    for c in outcome.checks:
        value = "-" if c["value"] is None else f"{c['value']:.4g}"
        bar = "-" if c["threshold"] is None else f"{c['threshold']:.4g}"
        lines.append(f"| {c['name']} | {value} | {bar} | {'yes' if c['passed'] else 'no'} | "
                     f"{c['detail']} |")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@task(name="release-check", retries=1, retry_delay_seconds=10, timeout_seconds=600)
def release_check_task(models: list[str] | None = None) -> list[ReleaseOutcome]:
    """Judge every open release (of ``models``, default all) and carry each verdict out; a
    decided one emits ``oceanml.release.promoted``/``aborted`` (and a promotion
    ``oceanml.model.promoted``) and every one makes its ``release-<model>`` artifact."""
    settings = get_settings()
    sessions, mlc = session_factory(settings.db_url), mlflow_client(settings)
    policy = load_file(settings.project_dir.resolve()).release
    with sessions() as session:
        names = sorted(open_releases(session, models or list(ZOO)))
    outcomes = []
    for model in names:
        outcome = check_release(sessions, mlc, model, policy)
        if outcome is None:  # ended by hand meanwhile
            continue
        outcomes.append(outcome)
        create_markdown_artifact(release_markdown(outcome), key=f"release-{model}",
                                 description=f"release {outcome.release_id} of {model}: "
                                             f"{outcome.action}")
        if outcome.action != "wait":
            with sessions() as session:
                release = session.get(Release, outcome.release_id)
                session.expunge(release)
            emit_release_event("promoted" if outcome.action == "promote" else "aborted",
                               release)
            if outcome.action == "promote":
                emit_champion_event(PROMOTED_EVENT, model, release.candidate_version,
                                    release.champion_version, release.reason)
    return outcomes
