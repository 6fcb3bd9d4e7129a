"""DVC plumbing: init, remote, ``repro``, ``push`` and restore-by-version.

DVC runs as a subprocess (``python -m dvc``): its CLI is the stable interface, and it installs
signal handlers that do not work from the worker threads Prefect runs tasks in.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from filelock import FileLock


class DvcError(RuntimeError):
    """A DVC command failed; the message carries its output."""


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Stage commands call ``python``: put this interpreter's bin first so they find our deps."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, **(extra or {}), "PATH": path, "DVC_NO_ANALYTICS": "1",
            "DVC_NO_UPDATER": "1"}


def project_lock(project_dir: Path) -> FileLock:
    """One DVC command at a time per project, across threads and processes: DVC takes its
    own repo lock and fails at once when another command holds it (the fleet's branches build
    their datasets side by side)."""
    key = hashlib.sha256(str(project_dir.resolve()).encode()).hexdigest()[:16]
    # one instance per path: re-entrant within a thread (repro holds it around its command),
    # exclusive between threads (each has its own descriptor) and processes
    return FileLock(Path(tempfile.gettempdir()) / f"oceanml-dvc-{key}.lock", is_singleton=True)


TRANSFER_ATTEMPTS = 3  # push and pull: a transfer that failed may pass on a second try
TRANSFER_BACKOFF_S = 5.0


class DvcTimeout(DvcError):
    """A DVC command ran past its timeout and was stopped, with the stage it ran."""


def dvc(project_dir: Path, *args: str, env: dict[str, str] | None = None,
        timeout_s: float | None = None) -> str:
    """Run one DVC command in ``project_dir`` and return its output. Past ``timeout_s``
    (``OCEANML_DVC_TIMEOUT_S``) the command and what it started (a stage's build) are
    stopped and :class:`DvcTimeout` says which command it was."""
    if timeout_s is None:
        from core.settings import get_settings

        timeout_s = get_settings().dvc_timeout_s
    command = f"dvc {' '.join(args)}"
    with project_lock(project_dir):
        proc = subprocess.Popen(
            [sys.executable, "-m", "dvc", *args], cwd=project_dir, env=_env(env),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise DvcTimeout(f"{command} did not finish within {timeout_s:.0f} s and was "
                             "stopped (OCEANML_DVC_TIMEOUT_S)") from None
        except BaseException:  # the task timed out, was cancelled or interrupted: no orphan
            _stop(proc)
            raise
    if proc.returncode != 0:
        raise DvcError(f"{command} failed ({proc.returncode}):\n{stdout}{stderr}")
    return stdout


def _stop(proc: subprocess.Popen) -> None:
    """Kill the command's process group (a stage's command goes too) and reap it, before the
    project lock is let go."""
    with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def transfer(project_dir: Path, *args: str) -> str:
    """A push or pull, tried again after a pause when it fails: transfers are idempotent,
    and a remote's hiccup should not fail a nightly. One that ran past its timeout is not
    tried again here: a remote that hung once likely hangs again, and each try holds the
    project lock (every other branch's dataset build) for the whole timeout; the task's own
    retry is the second chance."""
    for attempt in range(1, TRANSFER_ATTEMPTS + 1):
        try:
            return dvc(project_dir, *args)
        except DvcTimeout:
            raise
        except DvcError:
            if attempt == TRANSFER_ATTEMPTS:
                raise
            time.sleep(TRANSFER_BACKOFF_S * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _in_git(project_dir: Path) -> bool:
    proc = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=project_dir, capture_output=True, text=True
    )
    return proc.returncode == 0 and Path(proc.stdout.strip()).resolve() == project_dir.resolve()


def ensure_repo(project_dir: Path, remote_url: str, s3_endpoint_url: str | None = None) -> None:
    """Make ``project_dir`` a DVC repo (if needed) whose default remote is ``remote_url``.

    The remote goes to ``.dvc/config.local`` so each machine points at its own store without
    touching the committed config.
    """
    if not (project_dir / ".dvc").is_dir():
        dvc(project_dir, "init", *([] if _in_git(project_dir) else ["--no-scm"]))
    if "://" not in remote_url:
        Path(remote_url).mkdir(parents=True, exist_ok=True)
    dvc(project_dir, "remote", "add", "--local", "--force", "--default", "oceanml", remote_url)
    if s3_endpoint_url:
        dvc(project_dir, "remote", "modify", "--local", "oceanml", "endpointurl", s3_endpoint_url)


def locked_out_hash(project_dir: Path, stage: str) -> str | None:
    """The DVC hash of ``stage``'s first output as ``dvc.lock`` records it (the version)."""
    lock = project_dir / "dvc.lock"
    if not lock.exists():
        return None
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    outs = stages.get(stage, {}).get("outs") or []
    return outs[0]["md5"].removesuffix(".dir") if outs else None


def repro(project_dir: Path, stage: str, env: dict[str, str] | None = None) -> str:
    """Reproduce one stage (DVC skips it when deps and params are unchanged); its version."""
    with project_lock(project_dir):  # dvc.lock is read before another build rewrites it
        dvc(project_dir, "repro", "--single-item", stage, env=env)
        version = locked_out_hash(project_dir, stage)
    if version is None:
        raise DvcError(f"dvc.lock has no output hash for stage {stage}")
    return version


def push(project_dir: Path, stage: str) -> None:
    transfer(project_dir, "push", stage)


def restore(project_dir: Path, version: str, dest: Path) -> Path:
    """Fetch dataset ``version`` from the remote into ``dest`` (inside the project), verified.

    A one-off ``.dvc`` file names the version's directory hash; ``dvc pull`` downloads and
    checks every file against it, so a corrupt or missing object fails loudly.
    """
    dest = dest.resolve()
    pointer = dest.with_name(dest.name + ".dvc")
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text(yaml.safe_dump(
        {"outs": [{"md5": f"{version}.dir", "path": dest.name, "hash": "md5"}]}
    ))
    transfer(project_dir, "pull", "--force", str(pointer.relative_to(project_dir.resolve())))
    return dest
