"""A branch of the fleet, in the process :mod:`flows.fleet` spawned for it: what it is
given (:class:`BranchCall`), what it sends back (its outcome, after ``STARTED_BYTES`` once it
runs), and how it ends when told to (:data:`STOP_SIGNAL` becomes :class:`DeadlinePassed`) or
when its parent is gone."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle
from prefect import Flow
from prefect.context import hydrated_context
from prefect.states import State

from core import threads
from core.secrets import known_secrets, scrub
from core.settings import get_settings
from tasks.results import BranchFailure, BranchResult, WatchResult

MAX_ERROR = 300
STOP_SIGNAL = signal.SIGUSR1
STARTED_BYTES = b"started"
DRAIN_S = 20.0
PARENT_CHECK_S = 2.0

Outcome = BranchResult | WatchResult | BranchFailure


class DeadlinePassed(BaseException):
    """Raised in a branch's process when its parent ends it at the deadline. Not an
    ``Exception``: Prefect records the branch Crashed instead of retrying its task."""


@dataclass(frozen=True)
class BranchCall:
    """What a branch's process runs: ``branch(model, **kwargs)`` inside ``context``."""

    branch: Flow
    model: str
    kwargs: dict[str, Any]
    context: dict[str, Any]
    parent_run_id: str | None
    deadline_reason: str
    cores: threads.CoreShare | None = None  # its torch threads (:mod:`core.threads`)
    env: dict[str, str] | None = None  # the parent's environment when it started the branch


#: What the worker's runner gives the nightly's own process: the flow run's id and the control
#: channel its cancel goes through. A branch runs a subflow of its own and must not answer for
#: the nightly (Prefect's own run_flow_in_subprocess strips them too).
RUNNER_ENV = ("PREFECT__FLOW_RUN_ID", "PREFECT__CONTROL_PORT", "PREFECT__CONTROL_TOKEN")


def branch_main(sender: Connection, payload: bytes, parent_pid: int) -> None:
    """A branch's process: lead a process group (so the parent can end it with its DataLoader
    workers), end itself should the parent die, turn :data:`STOP_SIGNAL` into
    :class:`DeadlinePassed`, run the branch subflow on this main thread inside the parent's
    context, send back its outcome, then send its last logs and events (a loaded API server
    once took most of a deadline to take them, with the branch's work long done)."""
    os.setpgrp()
    call: BranchCall = cloudpickle.loads(payload)
    if call.env is not None:  # a fork server's environment is the one it started with
        os.environ.clear()
        os.environ.update(call.env)
        get_settings.cache_clear()
    for name in RUNNER_ENV:
        os.environ.pop(name, None)
    threads.use(call.cores)
    threading.Thread(target=_follow_parent, args=(os.getppid(), parent_pid), daemon=True,
                     name="parent-watch").start()

    def deadline(signum: int, frame: Any) -> None:
        signal.signal(STOP_SIGNAL, signal.SIG_DFL)  # a second one ends it at once
        raise DeadlinePassed(call.deadline_reason)

    signal.signal(STOP_SIGNAL, deadline)
    sender.send_bytes(STARTED_BYTES)  # the deadline counts from here
    try:
        with hydrated_context(call.context):
            state = call.branch(call.model, return_state=True, **call.kwargs)
        signal.signal(STOP_SIGNAL, signal.SIG_IGN)  # done: a late signal changes nothing
        outcome = branch_outcome(state)
    except DeadlinePassed as exc:
        outcome = BranchFailure(str(exc))
    except Exception as exc:  # noqa: BLE001 - e.g. a result that would not load
        outcome = BranchFailure(f"{type(exc).__name__}: {exc}"[:MAX_ERROR])
    signal.signal(STOP_SIGNAL, signal.SIG_IGN)
    sender.send_bytes(cloudpickle.dumps(outcome))  # the deadline stops counting here
    sender.close()
    _drain_prefect_workers()  # the parent waits for this process's exit (fleet.EXIT_S)


def _follow_parent(parent_pid: int, nightly_pid: int) -> None:
    """Kill this branch's group once its parent or the nightly is gone (SIGKILLed by a worker
    cancelling the nightly, or out of memory): a branch never runs on with nobody waiting for
    it. The parent is the fork server where there is one, which exits with the nightly."""
    while os.getppid() == parent_pid and _alive(nightly_pid):
        time.sleep(PARENT_CHECK_S)
    os.killpg(0, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - alive, someone else's
        return True
    return True


def _drain_prefect_workers() -> None:
    """Send the logs and events still queued to the API before the outcome goes back (the
    parent may kill what lingers after it)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=DRAIN_S)


def branch_outcome(state: State) -> Outcome:
    """A branch's results, or its error when it failed: its first line, cut, without a
    credential (an MLflow error quotes the tracking URL) and fit for a markdown table."""
    if state.is_completed():
        return state.result()
    message = (state.message or state.name).removeprefix("Flow run encountered an exception: ")
    line = scrub(message.strip().splitlines()[0] if message.strip() else state.name,
                 known_secrets(get_settings()))
    return BranchFailure(line[:MAX_ERROR].replace("|", "/"))  # one table cell of the summary
