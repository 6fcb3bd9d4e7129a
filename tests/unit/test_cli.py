from datetime import UTC, datetime

from typer.testing import CliRunner

from oceanml.cli import app
from tasks.ingest import ingest

runner = CliRunner()


def test_simulate_writes_pairs_and_faults_and_a_rerun_writes_nothing(settings) -> None:
    args = ["simulate", "--days", "1", "--devices", "2", "--per-day", "5", "--end", "2026-11-20"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "10 observations" in first.output and "20 files written, 11 fault files" in first.output
    again = runner.invoke(app, args)
    assert "0 files written, 0 fault files" in again.output


def test_rejects_lists_reasons(settings, sessions) -> None:
    runner.invoke(app, ["simulate", "--days", "1", "--devices", "1", "--per-day", "3",
                        "--end", "2026-11-20"])
    ingest(settings, sessions, now=datetime(2026, 11, 20, tzinfo=UTC))
    out = runner.invoke(app, ["rejects"]).output
    assert "duplicate=1" in out and "image_truncated" in out and "faults/truncated.jpg" in out


def test_settings_masks_secrets(settings, monkeypatch) -> None:
    from core.settings import get_settings

    monkeypatch.setenv("OCEANML_LLM_API_KEY", "sk-top-secret")
    get_settings.cache_clear()
    out = runner.invoke(app, ["settings"]).output
    assert "llm_api_key = **********" in out and "sk-top-secret" not in out


def test_an_unknown_dataset_version_is_a_clear_error(settings) -> None:
    result = runner.invoke(app, ["datasets", "show", "deadbeef"])
    assert result.exit_code == 2 and "no dataset version deadbeef" in result.output


def test_serve_refuses_an_unknown_model_and_an_empty_registry(settings) -> None:
    unknown = runner.invoke(app, ["serve", "--models", "kraken-detector"])
    assert unknown.exit_code == 2 and "unknown model(s) kraken-detector" in unknown.output
    empty = runner.invoke(app, ["serve"])
    assert empty.exit_code == 2 and "no model has a champion yet" in empty.output

