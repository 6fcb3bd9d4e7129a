"""The monitor under Prefect's harness: one subflow per model, a model that fails stops no
other, and the monitor ends Failed naming it, with every model's row in its summary; its
release check decides a release past its deadline (its row in the summary, its artifact)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from core.database import session_factory
from core.db import Prediction
from core.registry import client, ensure_registered_model, set_champion
from core.releases import start_release
from core.store import filesystem
from oceanml.simulator import simulate, write_landing
from tests.conftest import make_project
from tests.flows.test_nightly import run_artifact
from tests.registered import conv_net, register

pytestmark = pytest.mark.slow


def test_a_model_that_fails_stops_no_other_and_fails_the_monitor_by_name(
        prefect_harness, settings) -> None:
    from flows.monitor import monitor

    make_project(settings.project_dir)
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    write_landing(filesystem(settings.landing_url),
                  simulate(days=1, devices=2, per_day=10, end=end - timedelta(days=1)),
                  faults=False)
    mlc = client(settings)
    set_champion(mlc, "plastic-detector", register(mlc, settings, conv_net(1), "k1"))
    candidate = register(mlc, settings, conv_net(2), "k2")
    start_release(session_factory(settings.db_url), "plastic-detector", candidate, "1",
                  "canary", 0.2, timedelta(seconds=1), "test")  # over before the check
    ensure_registered_model(mlc, "algae-bloom")  # a version with no model_spec: unscorable
    broken = mlc.create_model_version("algae-bloom", source=str(settings.home))
    set_champion(mlc, "algae-bloom", str(broken.version))

    state = monitor(models=["plastic-detector", "algae-bloom"], return_state=True)
    assert state.is_failed()
    assert "1 of 2 models failed: algae-bloom: LookupError: algae-bloom v1 has no model_spec" \
        in state.message
    with session_factory(settings.db_url)() as s:
        scored = s.scalar(select(func.count()).select_from(Prediction)
                          .where(Prediction.model_name == "plastic-detector"))
    assert scored == 20  # the other model's champion scored what arrived
    text = run_artifact(str(state.state_details.flow_run_id), "monitor-summary").data
    assert "| plastic-detector | v1 | 20 | NO REFERENCE - no reference dataset yet |" in text
    assert "| algae-bloom | - | - | FAILED: LookupError: algae-bloom v1 has no model_spec" in text
    assert ("| 1 (plastic-detector) | v2 canary | ABORT: deadline reached without the "
            "evidence to promote: nothing served |") in text
    release = run_artifact(str(state.state_details.flow_run_id), "release-plastic-detector")
    assert "**ABORT**" in release.data and "| requests |" in release.data
