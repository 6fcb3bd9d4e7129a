"""The fleet's branches, each on the main thread of a process of its own, so that every
timeout ends what it bounds.

Prefect can end a task past its ``timeout_seconds`` with SIGALRM only on a process's main
thread: on any other thread it can only inject an exception between two bytecodes, which
never reaches a call blocked in the kernel (a read from a stalled disk, socket or pipe), and it
warns so. Each branch is therefore the subflow it always was (its own run under the nightly in
the UI, its logs and artifacts), run by a spawned process that hydrates the nightly's
context: its tasks' alarms interrupt a blocked read, and the branch as a whole has a deadline
(``OCEANML_BRANCH_TIMEOUT_S``, from the moment its process has started). Past it the parent
sends SIGUSR1, which the branch turns into :class:`DeadlinePassed` (its training job closes
failed with that reason, a DVC command it ran is stopped; SIGTERM would meet Prefect's own
handler); what has not ended after a grace period is killed with its process group
(DataLoader workers included), its subflow run is marked Crashed and its open training jobs
are closed failed, so nothing stays Running for a run that no longer exists.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection, wait
from typing import Any

import cloudpickle
from prefect import Flow
from prefect.context import serialize_context

from core.database import session_factory
from core.jobs import fail_open_jobs
from core.lineage import flow_run_id
from core.settings import get_settings
from core.spawning import spare_children_the_engine
from core.threads import CoreShare
from flows.branch_process import (
    MAX_ERROR,
    STARTED_BYTES,
    STOP_SIGNAL,
    BranchCall,
    BranchFailure,
    Outcome,
    branch_main,
)

GRACE_S = 20.0  # from SIGUSR1 to SIGKILL: long enough to close a job and stop a DVC command
STARTUP_S = 600.0  # a spawned branch imports torch, Lightning, MLflow and Prefect first
EXIT_S = 60.0  # from its outcome to its exit: the last logs and events, then Python's exit
STARTED = object()


def run_branches(models: list[str], concurrency: int, branch: Flow, **kwargs: Any
                 ) -> dict[str, Outcome]:
    """Every model's ``branch`` subflow, each in its own process, ``concurrency`` at a time
    (0: all); each one's outcome (one failing or passing its deadline never stops the
    others). Called inside the parent flow, whose run the branches appear under."""
    settings = get_settings()
    deadline = settings.branch_timeout_s
    context, parent = _branch_context(), flow_run_id()
    workers = min(concurrency or len(models), len(models))
    cores = CoreShare.of(workers)
    running = Started()
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="branch") as pool:
        futures = {m: pool.submit(contextvars.copy_context().run, _run_one, BranchCall(
            branch, m, kwargs, context, parent, f"the {m} branch passed its deadline of "
            f"{deadline:.0f} s (OCEANML_BRANCH_TIMEOUT_S) and was stopped", cores,
            dict(os.environ)), deadline, running) for m in models}
        try:
            return {m: f.result() for m, f in futures.items()}
        except BaseException:  # Ctrl-C or a cancelled run: no branch outlives the parent
            _abort(futures.values(), running)
            raise


class Started(list):
    """The branch processes running now; ``aborted`` once the run is being stopped, so that a
    branch whose start returns after that (the fork server's first start imports the stack)
    is killed at once instead of running on unwatched."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = threading.Event()


def _abort(futures: Any, running: Started) -> None:
    """Stop every branch: the ones not started never start, the running ones get the stop
    signal, and what still runs after the grace is killed (their waits then see the end)."""
    running.aborted.set()
    for future in futures:
        future.cancel()
    for process in list(running):
        _interrupt(process)
    ends = time.monotonic() + GRACE_S
    for process in list(running):
        process.join(max(0.0, ends - time.monotonic()))
        _stop(process, signal.SIGKILL)


def _branch_context() -> dict[str, Any]:
    """The parent flow's context for the branches, pointing them at the parent's Prefect API
    (with no ``PREFECT_API_URL``, the ephemeral server the parent started) rather than at
    servers of their own."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        return serialize_context()
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    if not server.running:  # pragma: no cover - a flow run always has an API by now
        return serialize_context()
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        return serialize_context()


def _run_one(call: BranchCall, deadline: float, running: Started) -> Outcome:
    """Start the branch's process (listed in ``running`` while it runs) and wait for its
    outcome until ``deadline`` seconds; then stop it (SIGUSR1, SIGKILL after the grace) and
    record why. A branch that failed leaves no run Running and no training job open; whatever
    goes wrong here is that branch's failure, never the others'."""
    try:
        outcome = _spawn_and_wait(call, deadline, running)
    except Exception as exc:  # noqa: BLE001 - a spawn or pipe error fails this branch alone
        outcome = BranchFailure(f"the {call.model} branch could not be run: "
                                f"{type(exc).__name__}: {exc}"[:MAX_ERROR])
    if isinstance(outcome, BranchFailure):
        try:
            _close_branch_run(call, outcome.error)
        except Exception as exc:  # noqa: BLE001 - the outcome stands; say what was left open
            logging.getLogger(__name__).warning(
                "could not close the %s branch's run and jobs: %s", call.model, exc)
    return outcome


#: What the fork server imports once, so each branch it forks starts with the stack loaded:
#: the flows, and what a branch's training and scoring import when they start (torch,
#: Lightning, MLflow's pytorch flavour; the flows themselves leave them out, for the CLI's sake).
PRELOAD = ["flows.branch_process", "flows.nightly", "flows.monitor", "core.job_callback",
           "lightning.pytorch.loggers", "mlflow.pytorch", "models.module", "models.datamodule",
           "models.backbones", "models.predictor"]


def start_method() -> multiprocessing.context.BaseContext:
    """Branches are forked by a fork server (started on the first branch, with the stack
    imported once: a spawned branch spent about 7 s of CPU importing torch, Lightning, MLflow
    and Prefect, so five branches 35 s); never forked from this process itself, whose threads
    (Prefect's, SQLAlchemy's) a fork would copy mid-state. Spawn where there is no fork
    server."""
    spare_children_the_engine()
    if "forkserver" not in multiprocessing.get_all_start_methods():  # pragma: no cover
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _spawn_and_wait(call: BranchCall, deadline: float, running: Started) -> Outcome:
    ctx = start_method()
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=branch_main, args=(sender, cloudpickle.dumps(call),
                                                     os.getpid()),
                          name=f"branch-{call.model}", daemon=False)
    process.start()
    running.append(process)
    sender.close()
    try:
        if running.aborted.is_set():  # started while its run was being stopped
            _stop(process, signal.SIGKILL)
            return BranchFailure(f"the {call.model} branch was stopped with its run")
        return _await(process, receiver, call, deadline)
    finally:
        _reap(process)
        running.remove(process)
        receiver.close()


def _await(process: multiprocessing.process.BaseProcess, receiver: Connection,
           call: BranchCall, deadline: float) -> Outcome:
    """The branch's outcome: it has ``STARTUP_S`` to start (a spawned process imports the
    whole stack), then ``deadline`` seconds to run; past either it is stopped."""
    reason = (f"the {call.model} branch's process did not start within {STARTUP_S:.0f} s and "
              "was stopped")
    for bound in (STARTUP_S, deadline):
        message = _next(process, receiver, call.model, bound)
        if message is None:
            break
        if message is not STARTED:
            return message
        reason = call.deadline_reason
    _interrupt(process)
    message = _next(process, receiver, call.model, GRACE_S)
    if message in (None, STARTED):  # deaf to the stop signal: killed now, not after EXIT_S
        _stop(process, signal.SIGKILL)
        return BranchFailure(reason)
    return message


def _next(process: multiprocessing.process.BaseProcess, receiver: Connection, model: str,
          timeout: float) -> Outcome | object | None:
    """What the branch sends next within ``timeout`` (None: nothing yet): :data:`STARTED`,
    its outcome, or its failure when the process died without one. The process's sentinel is
    watched beside the pipe: a DataLoader worker it forked may hold the pipe open after it."""
    ready = wait([receiver, process.sentinel], timeout)
    if not ready:
        return None
    if receiver not in ready and not receiver.poll(0):
        return BranchFailure(f"the {model} branch's process ended without an outcome "
                             f"(exit code {process.exitcode}: killed, or out of memory): see "
                             "its logs")
    try:
        data = receiver.recv_bytes()
    except (EOFError, OSError):
        return BranchFailure(f"the {model} branch's process ended without an outcome "
                             "(killed, or out of memory): see its logs")
    return STARTED if data == STARTED_BYTES else cloudpickle.loads(data)


def _interrupt(process: multiprocessing.process.BaseProcess) -> None:
    """Ask the branch to end: SIGUSR1, which it turns into :class:`DeadlinePassed` (SIGTERM
    would meet Prefect's own handler, which records a crash without the reason). Its group
    is left alone: a DataLoader worker killed first would fail the branch with another
    error."""
    if process.pid is not None and process.exitcode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, STOP_SIGNAL)


def _stop(process: multiprocessing.process.BaseProcess, sig: int) -> None:
    """Send ``sig`` to the branch's process group, or to the process alone while it is still
    starting (it leads a group of its own only once it runs)."""
    if process.pid is None or process.exitcode is not None:
        return
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)


def _reap(process: multiprocessing.process.BaseProcess) -> None:
    """Let the process exit (a branch that reported still sends its last logs), then kill
    what is left of the group and collect the process."""
    process.join(EXIT_S if process.exitcode is None else None)
    if process.exitcode is None:
        _stop(process, signal.SIGKILL)
        process.join()
    with contextlib.suppress(ProcessLookupError, PermissionError):  # workers it left behind
        os.killpg(process.pid, signal.SIGKILL)


def _close_branch_run(call: BranchCall, reason: str) -> None:
    """After a branch failed: its subflow run, if still running (its process was killed), is
    marked Crashed, and its training jobs still open are closed failed, with ``reason``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.states import Crashed

    if call.parent_run_id is None:  # pragma: no cover - branches always run inside a flow
        return
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[call.parent_run_id]),
            name=FlowRunFilterName(any_=[call.model])))
        for run in runs:
            if run.state is not None and not run.state.is_final():
                client.set_flow_run_state(run.id, Crashed(message=reason), force=True)
            fail_open_jobs(session_factory(get_settings().db_url), str(run.id), reason)


