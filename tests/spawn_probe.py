"""A process posing as a deployment's flow run, and its children's report, for
tests/unit/test_spawning.py and bench/ingest.py: kept apart from the test module so that a
child imports only this (and what its parent's ``__main__`` makes it import)."""

from __future__ import annotations

import importlib.util
import sys


def pose_as_main(module: str = "prefect.engine") -> None:
    """Leaves ``__main__`` as ``python -m <module>`` does (its spec and file are the
    module's): a Prefect process worker starts each flow run as ``python -m prefect.engine``."""
    main = sys.modules["__main__"]
    main.__spec__ = importlib.util.find_spec(module)
    main.__file__ = main.__spec__.origin


def started_with() -> dict[str, bool]:
    """Whether this child re-ran its parent's ``__main__`` (``multiprocessing`` runs it under
    the name ``__mp_main__``) and whether Prefect was imported, before this ran."""
    return {"main": sys.modules["__main__"].__name__ == "__mp_main__",
            "prefect": "prefect" in sys.modules}
