"""`oceanml run score` through Prefect's test harness: the CLI runs the score flow and prints
what each champion scored as JSON."""

from datetime import UTC, datetime

from typer.testing import CliRunner

from oceanml.cli import app
from tasks.ingest import ingest

runner = CliRunner()


def test_run_score_prints_what_each_champion_scored(settings, sessions, prefect_harness) -> None:
    import json

    from core.registry import client, set_champion
    from core.store import filesystem
    from oceanml.simulator import simulate, write_landing
    from tests.registered import SPEC, conv_net, register

    end = datetime(2026, 11, 20, tzinfo=UTC)
    write_landing(filesystem(settings.landing_url),
                  simulate(days=1, devices=2, per_day=6, end=end), faults=False)
    ingested = ingest(settings, sessions, now=end).ingested
    mlc = client(settings)
    set_champion(mlc, SPEC.name, register(mlc, settings, conv_net(1), "v1"))
    result = runner.invoke(app, ["run", "score", "--model", SPEC.name])
    assert result.exit_code == 0, result.output
    out = result.stdout
    doc = json.loads(out[out.index("{\n"):])  # the JSON the command prints last
    assert doc[SPEC.name]["version"] == "1" and 0 < doc[SPEC.name]["scored"] <= ingested
