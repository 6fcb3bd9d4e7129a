"""`oceanml models` on a real SQLite DB and MLflow registry: every command's --json output,
forced promotion, rollback, the refused promotion's exit code, and the alias following the
champion history."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from core.champion_history import record_change
from core.records import Evaluation
from core.registry import CHAMPION, PREVIOUS, alias_version, client, ensure_registered_model
from models.zoo import ZOO, get_spec
from oceanml.cli import app

MODEL = "plastic-detector"
runner = CliRunner()


@pytest.fixture
def mlc(settings, tmp_path):
    """Versions 1-3 of the model with the trainer's tags (no artifacts: nothing is loaded)."""
    from tests.conftest import make_project

    make_project(settings.project_dir)
    mlc = client(settings)
    ensure_registered_model(mlc, MODEL)
    for n in (1, 2, 3):
        mlc.create_model_version(MODEL, source=str(tmp_path), tags={
            "git_commit": f"commit{n}", "dataset_version": "ds-1", "training_key": f"k{n}",
            "model_spec": json.dumps(get_spec(MODEL).to_dict())})
    return mlc


def models(*args: str) -> tuple[int, object]:
    result = runner.invoke(app, ["models", *args, "--json"])
    try:
        return result.exit_code, json.loads(result.stdout)
    except json.JSONDecodeError:
        return result.exit_code, result.output


def champion(mlc) -> tuple[str | None, str | None]:
    found = [alias_version(mlc, MODEL, a) for a in (CHAMPION, PREVIOUS)]
    return tuple(str(v.version) if v else None for v in found)


def test_list_shows_every_model_and_nothing_is_champion_yet(settings, mlc) -> None:
    code, doc = models("list")
    assert code == 0
    assert [m["name"] for m in doc] == list(ZOO)
    assert doc[0] == {"name": MODEL, "champion": None, "previous": None, "versions": [1, 2, 3],
                      "last_decision": None}


def test_forced_promotion_rollback_and_history(settings, mlc) -> None:
    code, doc = models("promote", MODEL, "1", "--force", "--reason", "first model")
    assert code == 0 and (doc["version"], doc["forced"], doc["previous_version"]) == (
        "1", True, None)
    assert champion(mlc) == ("1", None)
    assert models("promote", MODEL, "3", "--force", "--reason", "hotfix")[0] == 0
    assert champion(mlc) == ("3", "1")
    assert str(mlc.get_model_version_by_alias(MODEL, "champion").version) == "3"

    code, doc = models("rollback", MODEL, "--reason", "v3 misfires on drones")
    assert code == 0 and (doc["version"], doc["previous_version"]) == ("1", "3")
    assert champion(mlc) == ("1", "3")
    code, out = models("rollback", MODEL, "--to", "2")
    assert code == 2 and "v2 was never champion" in out
    assert models("rollback", MODEL, "--to", "3")[0] == 0 and champion(mlc) == ("3", "1")

    code, changes = models("history", MODEL)
    assert code == 0
    assert [(c["action"], c["previous_version"], c["version"], c["forced"]) for c in changes] == [
        ("promote", None, "1", True), ("promote", "1", "3", True),
        ("rollback", "3", "1", False), ("rollback", "1", "3", False)]
    assert changes[2]["reason"] == "v3 misfires on drones"
    assert all(c["decided_by"].startswith("cli:") for c in changes)
    assert mlc.get_model_version(MODEL, "3").tags["promotion"] == "forced"


def test_usage_errors_exit_2_with_the_reason(settings, mlc) -> None:
    code, out = models("promote", MODEL, "1", "--force")
    assert code == 2 and "--force needs --reason" in out
    code, out = models("rollback", MODEL)
    assert code == 2 and "no champion to roll back from" in out
    models("promote", MODEL, "1", "--force", "--reason", "first")
    code, out = models("rollback", MODEL)
    assert code == 2 and "first champion" in out
    code, out = models("promote", MODEL, "9", "--force", "--reason", "x")
    assert code == 2
    code, out = models("show", "kraken-detector")
    assert code == 2 and "unknown model" in out


def test_a_refused_promotion_exits_1_and_the_champion_stays(settings, sessions, mlc) -> None:
    """v2 evaluated against v1 (recorded, so nothing is loaded) and worse: refused."""
    models("promote", MODEL, "1", "--force", "--reason", "first")
    trivial = {"prior": {"overall": {"accuracy": 0.3, "macro_f1": 0.3, "n": 40}, "slices": {}}}
    report = {"overall": {"accuracy": 0.6, "macro_f1": 0.6, "n": 40}, "slices": {},
              "trivial": trivial}
    better = {"overall": {"accuracy": 0.9, "macro_f1": 0.9, "n": 40}, "slices": {}}
    with sessions() as s:
        s.add(Evaluation(model_name=MODEL, model_version="2", champion_version="1",
                         dataset_version="ds-1", challenger_metrics=report,
                         champion_metrics=better))
        s.commit()
    code, doc = models("promote", MODEL, "2")
    assert code == 1 and doc["promoted"] is False
    assert doc["reason"] == "macro_f1 0.600 does not beat the champion's 0.900 by the margin 0.010"
    assert champion(mlc)[0] == "1"

    code, listed = models("list")
    last = listed[0]["last_decision"]
    assert (last["candidate"], last["champion"], last["action"], last["promoted"]) == (
        "2", "1", "gate", False)
    assert last["decided_by"].startswith("cli:") and last["dataset_version"] == "ds-1"
    assert [c["name"] for c in last["checks"]] == ["floor", "trivial", "gain"]
    code, shown = models("show", MODEL)
    assert code == 0 and shown["champion"] == "1"
    v2 = shown["versions"][1]
    assert (v2["version"], v2["champion"], v2["git_commit"], v2["promotion"]) == (
        "2", False, "commit2", "rejected")
    assert v2["decisions"][0]["champion"] == "1"
    assert [d["action"] for d in shown["versions"][0]["decisions"]] == ["force"]


def test_list_repairs_an_alias_the_history_moved_past(settings, sessions, mlc) -> None:
    models("promote", MODEL, "1", "--force", "--reason", "first")
    with sessions() as s:  # the process died after the commit, before the alias move
        record_change(s, MODEL, "2", "1", "promote", "won", "flow-run:x")
        s.commit()
    assert champion(mlc) == ("1", None)
    code, doc = models("list")
    assert code == 0 and doc[0]["champion"] == "2"
    assert champion(mlc) == ("2", "1")


def test_show_lists_each_versions_estimates_with_the_realized_figures(settings, sessions,
                                                                     mlc) -> None:
    from datetime import UTC, datetime, timedelta

    from core.records import PerformanceEstimate

    until = datetime(2026, 11, 21, tzinfo=UTC)
    estimated = {"accuracy": {"estimate": 0.88, "low": 0.86, "high": 0.9},
                 "macro_f1": {"estimate": 0.85, "low": 0.82, "high": 0.87}}
    with sessions() as s:
        for day, realized in ((0, {"accuracy": 0.87, "macro_f1": 0.84, "n": 120}), (1, None)):
            s.add(PerformanceEstimate(
                model_name=MODEL, model_version="2", window_since=until - timedelta(days=2),
                window_until=until + timedelta(days=day), n=480, metric="accuracy",
                estimated=estimated, test_value=0.9, drop=0.1, drifted=False,
                realized=realized))
        s.commit()
    code, doc = models("show", MODEL)
    assert code == 0
    by_version = {v["version"]: v["estimates"] for v in doc["versions"]}
    assert by_version["1"] == [] and len(by_version["2"]) == 2
    assert by_version["2"][0]["realized"] == {"accuracy": 0.87, "macro_f1": 0.84, "n": 120}
    text = runner.invoke(app, ["models", "show", MODEL]).output
    assert ("window to 2026-11-21T00:00 (480): estimated accuracy 0.880 [0.860, 0.900], test "
            "0.900, realized 0.870 (120 labelled)") in text
    assert "window to 2026-11-22T00:00 (480): estimated accuracy 0.880 [0.860, 0.900], test " \
           "0.900, not labelled yet" in text
