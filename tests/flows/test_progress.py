"""The progress artifact a stage moves in the UI: updated sparingly, and always at the end."""

import prefect.artifacts
from prefect import flow, task
from prefect.client.orchestration import get_client

from core import progress as progress_module
from core.progress import StageProgress


@task
def report(items: int) -> str:
    with StageProgress("unit-test", unit="item") as progress:
        for done in range(1, items + 1):
            progress(done, items)
    return str(progress.artifact_id)


@flow
def reporting(items: int) -> str:
    return report(items)


def test_progress_artifact_updates_are_throttled_and_end_at_100(prefect_harness, monkeypatch):
    """Each update is an API call; per item it cost the enrich stage 4 s in 2 000 items."""
    calls = []
    real = prefect.artifacts.update_progress_artifact

    def counting(*args, **kwargs):
        calls.append(args[1] if len(args) > 1 else kwargs.get("progress"))
        return real(*args, **kwargs)

    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", counting)
    monkeypatch.setattr(progress_module, "ARTIFACT_INTERVAL_S", 3600.0)
    artifact_id = reporting(500)
    assert calls == [100.0]  # the interval never passed: only the final update went out
    with get_client(sync_client=True) as client:
        artifact = client.read_artifacts()
    ours = [a for a in artifact if str(a.id) == artifact_id]
    assert ours and ours[0].data == 100.0
