"""The nightly summary: the exact row each stage's result gives, first run and re-run, and
the fleet table with one row per model, a failed branch included."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from tasks.dataset import DatasetVersion
from tasks.ingest import IngestResult
from tasks.results import (
    BranchFailure,
    BranchResult,
    DriftOutcome,
    EnrichSummary,
    EvaluationResult,
    FleetResult,
    PromotionResult,
    TrainingResult,
)
from tasks.score import ScoreResult
from tasks.summary import branch_rows, fleet_row, nightly_summary, shared_rows

MODEL = "plastic-detector"
CHALLENGER = {"overall": {"accuracy": 0.9375, "macro_f1": 0.9123, "n": 24},
              "per_class": {}, "slices": {}, "trivial": {
                  "majority": {"overall": {"accuracy": 0.5, "macro_f1": 0.222, "n": 24}},
                  "prior": {"overall": {"accuracy": 0.375, "macro_f1": 0.3333, "n": 24}}}}


def first_run() -> FleetResult:
    """Stage results as the tasks return them on a first night with new data."""
    branch = BranchResult(
        dataset=DatasetVersion(MODEL, "a1b2c3", "data/datasets/p", True,
                               {"train": 190, "val": 24, "test": 24}, {}),
        train=TrainingResult("1", "r", "k", {}, reused=False),
        evaluate=EvaluationResult("1", None, "a1b2c3", CHALLENGER, None, reused=False),
        promote=PromotionResult(True, "no champion yet; macro_f1 0.912 passes the bar 0.500",
                                decided_now=True, champion_version="1", previous_version=""),
        score=ScoreResult(MODEL, "1", scored=240, failed={17: "OSError: missing blob"},
                          days={"2026-11-19": 120, "2026-11-20": 120}),
        drift=DriftOutcome(False, "insufficient", "not enough recent data: 12 observations in "
                           "the window (< 50); no verdict", n_current=12),
    )
    return FleetResult(
        ingest=IngestResult(ingested=240, rejected=2, reasons=Counter(schema=1, duplicate=1)),
        enrich=EnrichSummary(provider="heuristic", model="heuristic-v1", enriched=240, cache_hits=3,
                             requests=237),
        models={MODEL: branch}, profile="cpu-small (2 CPU cores)")


def rerun() -> FleetResult:
    """The same night run again: nothing new anywhere, decisions reused."""
    results = first_run()
    b = results.models[MODEL]
    branch = replace(
        b, dataset=replace(b.dataset, created=False), train=replace(b.train, reused=True),
        evaluate=replace(b.evaluate, champion_version="1", reused=True),
        drift=DriftOutcome(True, "drift", "3/6 features drifted (ph, turbidity_ntu, "
                           "device_type); bar is 30%", n_current=240,
                           reference_dataset_version="a1b2c3", share_drifted=0.5),
        promote=PromotionResult(False, "v1 is already the champion", decided_now=False,
                                champion_version="1", previous_version="1"),
        score=ScoreResult(MODEL, "1", reason="nothing left to score"))
    return replace(results, ingest=IngestResult(already_known=242),
                   enrich=replace(results.enrich, enriched=0, cache_hits=0, requests=0),
                   models={MODEL: branch})


def summary_rows(model: str, results: FleetResult) -> list[tuple[str, str]]:
    return shared_rows(results) + branch_rows(model, results.models[MODEL])


def test_a_first_run_says_what_each_stage_did() -> None:
    assert summary_rows(MODEL, first_run()) == [
        ("ingest", "240 new observations, 2 rejected (duplicate: 1, schema: 1), "
                   "0 already known"),
        ("enrich", "240 enriched by heuristic/heuristic-v1 (237 requests, 3 cached, 0 failed, "
                   "0 left)"),
        ("dataset", "`a1b2c3` new version, train 190, val 24, test 24"),
        ("train", "plastic-detector v1 (new)"),
        ("evaluate", "test accuracy 0.938, macro_f1 0.912; trivial predictors majority accuracy 0.500, macro_f1"
                     " 0.222; prior accuracy 0.375, macro_f1 0.333; champion none"),
        ("promote", "PROMOTED - no champion yet; macro_f1 0.912 passes the bar 0.500"),
        ("score", "v1 scored 240 observations over 2 days, 1 failed (see the run log)"),
        ("drift", "NO VERDICT - not enough recent data: 12 observations in the window (< 50); "
                  "no verdict"),
    ]


def test_a_rerun_says_plainly_that_nothing_was_new() -> None:
    assert summary_rows(MODEL, rerun()) == [
        ("ingest", "0 new observations, 0 rejected (none), 242 already known - nothing new"),
        ("enrich", "0 enriched by heuristic/heuristic-v1 (0 requests, 0 cached, 0 failed, "
                   "0 left) - nothing to do"),
        ("dataset", "`a1b2c3` unchanged: no new version, "
                    "train 190, val 24, test 24"),
        ("train", "plastic-detector v1 (already trained on this data and params: reused)"),
        ("evaluate", "test accuracy 0.938, macro_f1 0.912; trivial predictors majority accuracy 0.500, macro_f1"
                     " 0.222; prior accuracy 0.375, macro_f1 0.333; champion v1 "
                     "(recorded earlier: reused)"),
        ("promote", "not promoted - v1 is already the champion (no new decision)"),
        ("score", "v1 scored 0 observations - nothing left to score"),
        ("drift", "DETECTED - 3/6 features drifted (ph, turbidity_ntu, device_type); "
                  "bar is 30%"),
    ]


def test_a_paid_provider_stopped_by_its_budget_and_a_regression_model() -> None:
    results = first_run()
    enrich = replace(results.enrich, provider="openai", model="gpt-4o-mini", enriched=100,
                     failed=2, left=138, stopped="request budget 102 reached",
                     prompt_tokens=9000, completion_tokens=1000, cost=0.01234)
    branch = results.models[MODEL]
    challenger = {"overall": {"mae": 0.0812, "rmse": 0.1104, "r2": 0.4567, "n": 24},
                  "per_target": {}, "slices": {},
                  "trivial": {"mean": {"overall": {"mae": 0.1203, "rmse": 0.1507,
                                                   "r2": -0.0123}}}}
    branch = replace(branch, evaluate=replace(branch.evaluate, challenger=challenger))
    results = replace(results, enrich=enrich, models={MODEL: branch})
    rows = dict(summary_rows("water-quality", results))
    assert rows["enrich"] == ("100 enriched by openai/gpt-4o-mini (237 requests, 3 cached, "
                              "2 failed, 138 left: request budget 102 reached), 10000 tokens, "
                              "~$0.0123")
    assert rows["evaluate"] == ("test mae 0.081, rmse 0.110, r2 0.457; trivial predictors mean "
                                "mae 0.120, rmse 0.151, r2 -0.012; champion none")
    assert rows["train"] == "water-quality v1 (new)"


def fleet_results() -> FleetResult:
    """A night of two models: one branch completed, one failed in training."""
    first = first_run()
    return replace(first, models={
        MODEL: first.models[MODEL],
        "water-quality": BranchFailure("RuntimeError: CUDA out of memory")})


def test_the_fleet_table_has_a_row_per_model_and_names_a_failed_branch() -> None:
    results = fleet_results()
    assert fleet_row(MODEL, results.models[MODEL]) == (
        MODEL, "completed", "`a1b2c3` new", "v1 new", "accuracy 0.938, macro_f1 0.912",
        "majority accuracy 0.500, macro_f1 0.222; prior accuracy 0.375, macro_f1 0.333",
        "PROMOTED v1", "240", "NO VERDICT")
    assert fleet_row("water-quality", results.models["water-quality"]) == (
        "water-quality", "FAILED: RuntimeError: CUDA out of memory", "-", "-", "-", "-", "-", "-",
        "-")


def test_the_markdown_names_the_profile_then_shared_stages_fleet_and_each_model() -> None:
    results = fleet_results()
    lines = nightly_summary(results, {"MLflow": "`mlflow ui`"}).splitlines()
    assert lines[:6] == ["# OceanML nightly: 2 models, 1 FAILED (water-quality)", "",
                         "Profile: cpu-small (2 CPU cores)", "", "| stage | outcome |", "|---|---|"]
    assert lines[6:8] == [f"| {stage} | {outcome} |" for stage, outcome in shared_rows(results)]
    assert lines[9] == ("| model | branch | dataset | version | test | trivial predictors | "
                        "promotion | scored | drift |")
    assert lines[11:13] == ["| " + " | ".join(fleet_row(m, b)) + " |"
                            for m, b in results.models.items()]
    assert lines[14:18] == [f"## `{MODEL}`", "", "| stage | outcome |", "|---|---|"]
    assert lines[18:24] == [f"| {stage} | {outcome} |"
                            for stage, outcome in branch_rows(MODEL, results.models[MODEL])]
    assert "## `water-quality`" not in lines  # a failed branch has its row, no stages
    assert lines[-4:] == ["", "Where to look:", "", "- MLflow: `mlflow ui`"]


def test_where_to_look_never_shows_a_password(settings, monkeypatch) -> None:
    from core.settings import get_settings
    from tasks.summary import where_to_look

    monkeypatch.setenv("OCEANML_DB_URL", "postgresql+psycopg://ocean:Sentinel-db-1@db:5432/o")
    monkeypatch.setenv("OCEANML_MLFLOW_TRACKING_URI", "https://ml:Sentinel-ml-2@mlflow.example")
    get_settings.cache_clear()
    text = "\n".join(where_to_look().values())
    assert "Sentinel" not in text
    assert "postgresql+psycopg://ocean:***@db:5432/o" in text
    assert "https://ml:***@mlflow.example" in text


def test_an_mlflow_link_names_the_run_and_hides_the_password(settings) -> None:
    from core.registry import client, ensure_experiment, run_link

    mlc = client(settings)
    run = mlc.create_run(ensure_experiment(mlc, "links", None))
    link = run_link(mlc, "https://ml:Sentinel-3@mlflow.example/", run.info.run_id, "drift")
    assert link == (f"https://ml:***@mlflow.example/#/experiments/{run.info.experiment_id}/runs/"
                    f"{run.info.run_id} (artifacts `drift/`)")


def test_the_drift_line_shows_the_label_free_estimate() -> None:
    """The nightly's and the monitor's drift line (both use ``drift_outcome``)."""
    from tasks.summary import drift_outcome

    feature = {"kind": "performance", "metric": "accuracy", "n": 480, "test": 0.91,
               "drop": 0.1, "drifted": False,
               "estimated": {"accuracy": {"estimate": 0.8812, "low": 0.8633, "high": 0.8991},
                             "macro_f1": {"estimate": 0.85, "low": 0.83, "high": 0.87}}}
    drift = DriftOutcome(False, "none", "0/21 features drifted (none); bar is 30%",
                         performance=feature)
    assert drift_outcome(drift) == ("none - 0/21 features drifted (none); bar is 30%; "
                                    "estimated accuracy 0.881 [0.863, 0.899] (test 0.910)")
    low = {**feature, "drifted": True,
           "estimated": {**feature["estimated"],
                         "accuracy": {"estimate": 0.7, "low": 0.66, "high": 0.74}}}
    assert drift_outcome(replace(drift, verdict="drift", performance=low)).endswith(
        "estimated accuracy 0.700 [0.660, 0.740] (test 0.910, more than 0.10 below: "
        "PERFORMANCE DRIFT)")
    assert drift_outcome(replace(drift, performance=None)) == (
        "none - 0/21 features drifted (none); bar is 30%")
