"""The promote stage's logic on a real SQLite DB and a real MLflow registry (SQLite store).

``promote`` is what ``promote_task`` runs; the task only adds the Prefect event and the log.
No model is trained: the registry holds versions with the trainer's tags, which is all a
promotion reads or writes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select

from core.champion_history import current_champion, history, record_change, sync_alias
from core.params_schema import PromotionPolicy
from core.records import Promotion
from core.registry import (
    CHAMPION,
    PREVIOUS,
    alias_version,
    client,
    ensure_registered_model,
    set_champion,
)
from models.zoo import get_spec
from tasks.promote import promote
from tasks.results import EvaluationResult, PromotionResult
from tests.mlflow_recording import Recording

MODEL = "plastic-detector"
POLICY = PromotionPolicy(metric="macro_f1", floor=0.5, margin=0.01, max_slice_drop=0.1)
# the trivial predictor's figures on the same split: every challenger here beats them
TRIVIAL = {"prior": {"overall": {"accuracy": 0.3, "macro_f1": 0.3, "n": 10}, "slices": {}}}


@pytest.fixture
def mlc(settings, tmp_path):
    """A registry holding versions 1-3 of the model, tagged as the trainer tags them."""
    mlc = client(settings)
    ensure_registered_model(mlc, MODEL)
    for n in (1, 2, 3):
        mlc.create_model_version(MODEL, source=str(tmp_path), tags={
            "git_commit": "abc123", "prefect_flow_run_id": "", "dataset_version": "ds-1",
            "training_key": f"key-{n}", "model_spec": json.dumps(get_spec(MODEL).to_dict())})
    return mlc


def evaluation(version: str, f1: float, champion: str | None = None,
               champion_f1: float | None = None) -> EvaluationResult:
    """What ``evaluate`` returns, cut to what the gates read."""
    def report(value: float) -> dict[str, Any]:
        return {"overall": {"accuracy": value, "macro_f1": value, "n": 10}, "slices": {},
                "trivial": TRIVIAL}

    return EvaluationResult(version, champion, "ds-1", report(f1),
                            report(champion_f1) if champion_f1 is not None else None)


def rows(sessions) -> list[tuple]:
    with sessions() as s:
        return [(p.model_name, p.challenger_version, p.champion_version, p.promoted, p.reason,
                 p.flow_run_id) for p in s.scalars(select(Promotion).order_by(Promotion.id))]


def tags(mlc, version: str) -> dict[str, str]:
    return dict(mlc.get_model_version(MODEL, version).tags)


def aliases(mlc) -> dict[str, str | None]:
    found = {a: alias_version(mlc, MODEL, a) for a in (CHAMPION, PREVIOUS)}
    return {a: str(v.version) if v else None for a, v in found.items()}


def crown(sessions, mlc, version: str) -> None:
    """Make ``version`` champion the way every change is made: history first, then alias."""
    with sessions() as s:
        record_change(s, MODEL, version, current_champion(sessions, mlc, MODEL), "promote",
                      "by the test", "test")
        s.commit()
    sync_alias(mlc, sessions, MODEL)


def changes(sessions) -> list[tuple]:
    with sessions() as s:
        return [(c.version, c.previous_version, c.action) for c in history(s, MODEL)]


def test_a_first_model_above_the_floor_becomes_champion_once(sessions, mlc) -> None:
    before = tags(mlc, "1")
    first = promote(sessions, mlc, MODEL, evaluation("1", 0.7), POLICY, "run-1")
    reason = ("no champion yet; macro_f1 0.700 passes the bar 0.500 and beats the prior "
              "predictor's 0.300")
    record = first.decision
    assert (record["action"], record["candidate"], record["champion"], record["promoted"],
            record["forced"], record["decided_by"], record["dataset_version"]) == (
        "gate", "1", None, True, False, "flow-run:run-1", "ds-1")
    assert record["checks"] == [
        {"name": "floor", "value": 0.7, "threshold": 0.5, "passed": True,
         "detail": "macro_f1 0.700 is at or above the floor 0.500"},
        {"name": "trivial", "value": pytest.approx(0.4), "threshold": 0.0, "passed": True,
         "detail": "macro_f1 0.700 beats the prior predictor's 0.300 (gain +0.400 is above 0)"}]
    assert first == PromotionResult(True, reason, decided_now=True, champion_version="1",
                                    previous_version="", decision=record)
    assert aliases(mlc) == {CHAMPION: "1", PREVIOUS: None}
    assert tags(mlc, "1") == {**before, "promotion": "promoted", "promotion_reason": reason,
                              "decision_id": str(record["id"]), "decision_checks": "floor pass; trivial pass",
                              "decided_by": "flow-run:run-1"}
    assert "promotion" not in tags(mlc, "2")
    assert rows(sessions) == [(MODEL, "1", "", True, reason, "run-1")]

    recording = Recording(mlc)  # a re-run, a retry: the recorded decision, nothing written
    again = promote(sessions, recording, MODEL, evaluation("1", 0.7), POLICY, "run-2")
    assert again == replace(first, decided_now=False, decision=None)
    assert recording.writes == []
    assert rows(sessions) == [(MODEL, "1", "", True, reason, "run-1")]


def test_a_challenger_beating_the_champion_moves_the_alias_and_keeps_the_old_one(
        sessions, mlc) -> None:
    set_champion(mlc, MODEL, "1")
    result = promote(sessions, mlc, MODEL, evaluation("2", 0.9, "1", 0.8), POLICY, "run-1")
    assert result.promoted and result.decided_now and result.champion_version == "2"
    assert result.reason.startswith("macro_f1 0.900 beats the champion's 0.800 by 0.100")
    assert aliases(mlc) == {CHAMPION: "2", PREVIOUS: "1"}
    assert tags(mlc, "2")["promotion"] == "promoted" and "promotion" not in tags(mlc, "1")
    assert rows(sessions) == [(MODEL, "2", "1", True, result.reason, "run-1")]


def test_a_rejection_is_tagged_and_recorded_and_the_alias_stays(sessions, mlc) -> None:
    set_champion(mlc, MODEL, "1")
    ev = evaluation("2", 0.805, "1", 0.8)
    rejected = promote(sessions, mlc, MODEL, ev, POLICY, None)
    reason = "macro_f1 0.805 does not beat the champion's 0.800 by the margin 0.010"
    record = rejected.decision
    assert [(c["name"], c["passed"]) for c in record["checks"]] == [("floor", True),
                                                                     ("trivial", True),
                                                                     ("gain", False)]
    assert record["interval"]["gain"] == pytest.approx(0.005) and not record["promoted"]
    assert [f["name"] for f in record["interval"]["trivial"]] == ["prior"]
    assert tags(mlc, "2")["decision_checks"] == "floor pass; trivial pass; gain FAIL"
    assert rejected == PromotionResult(False, reason, decided_now=True, champion_version="1",
                                       previous_version="1", decision=record)
    assert aliases(mlc) == {CHAMPION: "1", PREVIOUS: None}
    assert tags(mlc, "2")["promotion"] == "rejected"
    assert tags(mlc, "2")["promotion_reason"] == reason
    assert rows(sessions) == [(MODEL, "2", "1", False, reason, None)]

    recording = Recording(mlc)
    assert promote(sessions, recording, MODEL, ev, POLICY, "run-2") == replace(
        rejected, decided_now=False, decision=None)
    assert recording.writes == [] and len(rows(sessions)) == 1


def test_a_new_champion_makes_a_new_decision_for_the_same_challenger(sessions, mlc) -> None:
    """The decision's key is (model, challenger, champion): v2 lost to v1, v3 became champion,
    so v2 against v3 is a question not yet answered."""
    set_champion(mlc, MODEL, "1")
    promote(sessions, mlc, MODEL, evaluation("2", 0.805, "1", 0.8), POLICY, "run-1")
    crown(sessions, mlc, "3")
    result = promote(sessions, mlc, MODEL, evaluation("2", 0.805, "3", 0.7), POLICY, "run-2")
    assert result.promoted and result.decided_now
    assert aliases(mlc) == {CHAMPION: "2", PREVIOUS: "3"}
    assert [r[1:4] for r in rows(sessions)] == [("2", "1", False), ("2", "3", True)]


def test_the_champion_itself_needs_no_decision_and_records_none(sessions, mlc) -> None:
    set_champion(mlc, MODEL, "1")
    recording = Recording(mlc)
    result = promote(sessions, recording, MODEL, evaluation("1", 0.9, "1"), POLICY, "run-1")
    assert result == PromotionResult(False, "v1 is already the champion", decided_now=False,
                                     champion_version="1", previous_version="1")
    assert recording.writes == [] and rows(sessions) == []


def test_below_the_floor_without_a_champion_leaves_no_champion(sessions, mlc) -> None:
    result = promote(sessions, mlc, MODEL, evaluation("1", 0.4), POLICY, "run-1")
    assert result.decision["checks"][0]["passed"] is False
    assert replace(result, decision=None) == PromotionResult(
        False, "macro_f1 0.400 is below the floor 0.500", decided_now=True,
        champion_version="", previous_version="")
    assert aliases(mlc) == {CHAMPION: None, PREVIOUS: None}
    assert tags(mlc, "1")["promotion"] == "rejected"
    assert rows(sessions) == [(MODEL, "1", "", False, result.reason, "run-1")]


def test_every_change_is_in_the_history_and_the_alias_follows_it(sessions, mlc) -> None:
    promote(sessions, mlc, MODEL, evaluation("1", 0.7), POLICY, "run-1")
    promote(sessions, mlc, MODEL, evaluation("2", 0.9, "1", 0.7), POLICY, "run-2")
    promote(sessions, mlc, MODEL, evaluation("3", 0.6, "2", 0.9), POLICY, "run-3")  # refused
    assert changes(sessions) == [("1", None, "promote"), ("2", "1", "promote")]
    assert aliases(mlc) == {CHAMPION: "2", PREVIOUS: "1"}


def test_an_alias_left_behind_by_a_crash_is_repaired_by_the_next_promotion(sessions,
                                                                          mlc) -> None:
    promote(sessions, mlc, MODEL, evaluation("1", 0.7), POLICY, "run-1")
    with sessions() as s:  # committed, then the process died before moving the alias
        record_change(s, MODEL, "2", "1", "promote", "won", "flow-run:x")
        s.commit()
    assert aliases(mlc)[CHAMPION] == "1"
    result = promote(sessions, mlc, MODEL, evaluation("3", 0.6, "2", 0.9), POLICY, "run-3")
    assert not result.promoted and result.previous_version == "2"
    assert aliases(mlc) == {CHAMPION: "2", PREVIOUS: "1"}


def test_a_stale_evaluation_is_redone_against_the_champion_read_under_the_lock(sessions,
                                                                             mlc) -> None:
    """v3 was evaluated against v1, but v2 won meanwhile: v3 is judged against v2."""
    promote(sessions, mlc, MODEL, evaluation("1", 0.7), POLICY, "run-1")
    promote(sessions, mlc, MODEL, evaluation("2", 0.95, "1", 0.7), POLICY, "run-2")
    stale = evaluation("3", 0.9, "1", 0.7)  # would beat v1
    with pytest.raises(RuntimeError, match="champion is v2"):
        promote(sessions, mlc, MODEL, stale, POLICY, "run-3")
    asked = []

    def reevaluate(champion):
        asked.append(champion)
        return evaluation("3", 0.9, champion, 0.95)

    result = promote(sessions, mlc, MODEL, stale, POLICY, "run-3", reevaluate=reevaluate)
    assert asked == ["2"] and not result.promoted
    assert "does not beat the champion's 0.950" in result.reason
    assert aliases(mlc)[CHAMPION] == "2" and rows(sessions)[-1][1:4] == ("3", "2", False)
