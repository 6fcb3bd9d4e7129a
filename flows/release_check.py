"""Every open release judged on what the endpoint served: its candidate promoted, aborted
or left to run until its deadline (``tasks/release_check.py``). Deployed every 10 minutes
(``prefect.yaml``) and run by the hourly monitor too."""

from __future__ import annotations

from prefect import flow

from flows.timeouts import timed
from tasks.release_check import ReleaseOutcome, release_check_task


@flow(name="release-check", log_prints=True)
def release_check(models: list[str] | None = None) -> list[ReleaseOutcome]:
    """Judge the open releases of ``models`` (default: every model)."""
    outcomes = timed(release_check_task)(models)
    for o in outcomes:
        print(f"release {o.release_id} of {o.model} (v{o.candidate_version}, {o.mode}): "
              f"{o.action.upper()} - {o.reason}")
    if not outcomes:
        print("no open release")
    return outcomes


if __name__ == "__main__":
    release_check()
