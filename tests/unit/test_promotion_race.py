"""20 promotions of different versions of one model, started at once as separate processes
(forked by ``tests/racer.py`` from one that imported what they need),
on SQLite and on PostgreSQL: afterwards exactly one champion, each change decided against the
champion before it (re-evaluated when its evaluation had gone stale), the history one chain,
and the MLflow alias on its head."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict

import pytest
from sqlalchemy import select

from core.champion_history import history
from core.database import session_factory
from core.params_schema import PromotionPolicy
from core.records import Evaluation, Promotion
from core.registry import alias_version, client
from models.zoo import get_spec
from tasks.champion import force_promote
from tasks.evaluate import evaluate
from tests.conftest import REPO
from tests.registered import SPEC, conv_net, register

pytestmark = pytest.mark.slow
RACERS = 20
POLICY = PromotionPolicy(metric="macro_f1", floor=0.0, margin=0.0, max_slice_drop=1.0)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request, settings) -> str:
    if request.param == "sqlite":
        return settings.db_url
    return request.getfixturevalue("pg_url")


def test_twenty_racing_promotions_leave_one_consistent_chain(settings, dataset, db_url,
                                                              tmp_path) -> None:
    sessions, mlc = session_factory(db_url), client(settings)
    spec = get_spec(SPEC.name, input_size=32)
    versions = [register(mlc, settings, conv_net(seed), f"racer-{seed}")
                for seed in range(RACERS + 1)]
    # the first champion by hand: these untrained nets rarely beat the trivial predictors,
    # and the race is about who decides against whom, not about the gates
    assert force_promote(sessions, mlc, SPEC.name, versions[0], "race setup", "test")
    evaluations = {v: evaluate(sessions, mlc, spec, "ds-1", v, lambda: dataset, None)
                   for v in versions[1:]}  # each against v1, the champion at the start
    race = tmp_path / "race"
    race.mkdir()
    (race / "race.json").write_text(json.dumps({
        "db_url": db_url, "dataset": str(dataset), "policy": json.loads(POLICY.model_dump_json()),
        "out": str(race), "racers": {v: asdict(evaluations[v]) for v in versions[1:]}}))
    launcher = subprocess.Popen([sys.executable, "-m", "tests.racer", str(race / "race.json")],
                                cwd=REPO, env={**os.environ, "PREFECT_API_URL": ""},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)  # its racers in its group
    try:
        _, stderr = launcher.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):  # no racer outlives the test
            os.killpg(launcher.pid, signal.SIGKILL)
    errors = {p.stem: p.read_text()[-3000:] for p in race.glob("*.err")}
    assert launcher.returncode == 0 and not errors, (stderr[-3000:], errors)
    results = {v: json.loads((race / f"{v}.json").read_text()) for v in versions[1:]}

    with sessions() as s:
        chain = history(s, SPEC.name)
        decisions = {(p.challenger_version, p.champion_version): p
                     for p in s.scalars(select(Promotion))}
        evaluated = {(e.model_version, e.champion_version)
                     for e in s.scalars(select(Evaluation))}
    assert len(decisions) == RACERS  # one decision per racer (the first was forced)
    assert chain[0].version == versions[0] and chain[0].previous_version is None
    for before, after in zip(chain, chain[1:], strict=False):
        assert after.previous_version == before.version  # one chain: nobody skipped a link
        decision = decisions[(after.version, before.version)]
        assert decision.promoted  # it passed its gates against its predecessor
        assert (after.version, before.version) in evaluated  # on a fresh evaluation
    promoted = {c.version for c in chain[1:]}
    assert promoted == {v for v, r in results.items() if r["promoted"] and r["decided_now"]}
    for r in results.values():
        assert r["previous_version"] in {c.version for c in chain}  # decided against a champion
    assert str(alias_version(mlc, SPEC.name).version) == chain[-1].version
