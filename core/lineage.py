"""Where a result came from: git commit and Prefect flow run, attached to every decision."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(project_dir: Path | str = ".") -> str:
    """The commit the code runs at, with ``-dirty`` when the tree has local changes."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=project_dir, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=project_dir, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def flow_run_id() -> str | None:
    """The id of the Prefect flow run we are inside, or None when called without Prefect."""
    try:
        from prefect.runtime import flow_run
    except ImportError:  # pragma: no cover - prefect is a dependency
        return None
    run_id = flow_run.get_id()
    return str(run_id) if run_id else None
