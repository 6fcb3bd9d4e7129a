"""20 promotions of different versions of one model, started at once as separate processes,
on SQLite and on PostgreSQL: afterwards exactly one champion, each change decided against the
champion before it (re-evaluated when its evaluation had gone stale), the history one chain,
and the MLflow alias on its head."""

from __future__ import annotations

import json
import os
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
from tests.registered import SPEC, conv_net, register

pytestmark = pytest.mark.slow
RACERS = 20
POLICY = PromotionPolicy(metric="macro_f1", floor=0.0, margin=0.0, max_slice_drop=1.0)

CHILD = """
import json, sys
from pathlib import Path
from core.database import session_factory
from core.registry import client
from core.settings import get_settings
from models.zoo import get_spec
from dataclasses import asdict
from tasks.evaluate import evaluate
from core.params_schema import PromotionPolicy
from tasks.promote import promote
from tasks.results import EvaluationResult

db_url, dataset, version, evaluation = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
settings = get_settings()
sessions, mlc = session_factory(db_url), client(settings)
policy = PromotionPolicy(**json.loads(sys.argv[5]))
spec = get_spec("plastic-detector", input_size=32)

def reevaluate(champion):
    return evaluate(sessions, mlc, spec, "ds-1", version, lambda: dataset, None,
                    champion_version=champion)

result = promote(sessions, mlc, "plastic-detector", EvaluationResult(**json.loads(evaluation)),
                 policy, f"racer-{version}", reevaluate=reevaluate)
print(json.dumps(asdict(result)))
"""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request, settings) -> str:
    if request.param == "sqlite":
        return settings.db_url
    return request.getfixturevalue("pg_url")


def test_twenty_racing_promotions_leave_one_consistent_chain(settings, dataset, db_url) -> None:
    sessions, mlc = session_factory(db_url), client(settings)
    spec = get_spec(SPEC.name, input_size=32)
    versions = [register(mlc, settings, conv_net(seed), f"racer-{seed}")
                for seed in range(RACERS + 1)]
    # the first champion by hand: these untrained nets rarely beat the trivial predictors,
    # and the race is about who decides against whom, not about the gates
    assert force_promote(sessions, mlc, SPEC.name, versions[0], "race setup", "test")
    evaluations = {v: evaluate(sessions, mlc, spec, "ds-1", v, lambda: dataset, None)
                   for v in versions[1:]}  # each against v1, the champion at the start
    env = {**os.environ, "PREFECT_API_URL": ""}
    racers = [subprocess.Popen(
        [sys.executable, "-c", CHILD, db_url, str(dataset), v, json.dumps(asdict(evaluations[v])),
         POLICY.model_dump_json()], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for v in versions[1:]]
    results = {}
    for v, racer in zip(versions[1:], racers, strict=True):
        out, err = racer.communicate(timeout=600)
        assert racer.returncode == 0, err[-3000:]
        results[v] = json.loads(out.strip().splitlines()[-1])

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
