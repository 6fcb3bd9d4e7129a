"""Children of a deployment's flow run start without importing Prefect (core.spawning).

The parent is a real process whose ``__main__`` is what ``python -m prefect.engine`` leaves
(its spec and file are the engine's), and its children are real spawned processes; each
reports whether it re-ran that main and imported Prefect before its target ran. A fork
server's children get the same preparation data from the parent (``multiprocessing.spawn``),
so one spawned child after each site shows what any child would do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PARENT = """
import json, multiprocessing, sys
from tests.spawn_probe import pose_as_main, started_with
pose_as_main(sys.argv[1])
main = sys.modules["__main__"]
from core.spawning import spare_children_the_engine

def child(context):
    with context.Pool(1) as pool:
        return pool.apply(started_with)

seen = {"spawn, as started": child(multiprocessing.get_context("spawn"))}
if sys.argv[2] == "loader":  # models.datamodule.worker_context spares its workers itself
    from models.datamodule import worker_context
    worker_context()  # (its fork server is left unstarted: it would import torch again)
elif sys.argv[2] == "preparer":  # so does the ingest's pool, when it makes it
    from tasks.preparer import Preparer
    with Preparer(None, None, None, None, workers=2, pool_from=0) as preparer:
        preparer.submit([])
else:
    spare_children_the_engine()
seen["spawn, spared"] = child(multiprocessing.get_context("spawn"))
seen["main's spec"] = getattr(main.__spec__, "name", None)
print(json.dumps(seen))
"""


def children(main: str, site: str = "-") -> dict:
    out = subprocess.run([sys.executable, "-c", PARENT, main, site],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("site", ["loader", "preparer"])
def test_children_of_the_engine_main_start_without_importing_prefect(site: str) -> None:
    seen = children("prefect.engine", site)
    assert seen["spawn, as started"] == {"main": True, "prefect": True}  # the cost is real
    assert seen["spawn, spared"] == {"main": False, "prefect": False}  # after that site ran
    assert seen["main's spec"] is None


def test_any_other_main_is_left_as_it_is() -> None:
    seen = children("tests.spawn_probe")  # a user's own main: its children may need it
    assert seen["main's spec"] == "tests.spawn_probe"
    assert seen["spawn, spared"] == {"main": True, "prefect": False}
