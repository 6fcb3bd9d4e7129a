"""Child processes of a deployment's flow run that do not begin by importing all of Prefect.

A process that ``multiprocessing`` spawns, or forks from a fork server, first runs its
parent's ``__main__`` module again, so that functions defined there can be unpickled. A
deployment's flow run is started by its worker as ``python -m prefect.engine``, so every child
it started (the ingest's workers, each DataLoader worker of a training, evaluation or scoring,
a ``ddp_spawn`` rank) imported Prefect before its first line of work: 0.6 to 0.9 s of CPU and
about 50 MB each, measured. No OceanML child runs anything defined in ``__main__`` (their
targets live in modules), so the engine's ``__main__`` is kept from them. Any other
``__main__`` (a user's script, the CLI) is left as it is: its children may need it.
"""

from __future__ import annotations

import sys

#: How Prefect starts a flow run's process: its process worker and runner run the first, its
#: workspace supervisor may run the second
ENGINES = frozenset({"prefect.engine", "prefect.flow_engine"})


def spare_children_the_engine() -> None:
    """Keeps children started from now on from re-running Prefect's engine as their main.

    ``multiprocessing`` finds the main to re-run from ``__main__.__spec__`` (a module run with
    ``-m``) or ``__main__.__file__`` (a script). Where that is the engine, both are removed:
    the engine does not read them once it runs, nor does Prefect's flow loading (by
    entrypoint) or cloudpickle (by module name). Lightning's ``ddp`` launcher would, to run
    the main again per rank; under a deployment that re-ran the whole flow run per rank, so
    ``ddp_spawn`` is the default there (``core.hardware``). Idempotent, and a no-op in a
    process not started as ``python -m prefect.engine`` (or as a child that re-ran it)."""
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) not in ENGINES:
        return
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
