"""Racing promotions for ``tests/unit/test_promotion_race.py``: one process imports what a
promotion needs once, then forks one process per racer, all at once; each promotes its
version against whatever champion it finds and writes its result (or its traceback) to a
file of its own. The forks start within milliseconds of each other (twenty interpreters each
importing torch, MLflow and Prefect started over seconds, and cost two CPU-minutes a race).

    python -m tests.racer RACE.json   # {"db_url", "dataset", "policy", "out", "racers": {version: evaluation}}

Exits non-zero when a racer failed; its traceback is in ``out/VERSION.err``."""

from __future__ import annotations

import json
import os
import sys
import traceback
from dataclasses import asdict
from pathlib import Path


def race(db_url: str, dataset: Path, version: str, evaluation: dict, policy: dict) -> dict:
    """Promote ``version`` (evaluated as ``evaluation``) under ``policy``."""
    from core.database import session_factory
    from core.params_schema import PromotionPolicy
    from core.registry import client
    from core.settings import get_settings
    from models.zoo import get_spec
    from tasks.evaluate import evaluate
    from tasks.promote import promote
    from tasks.results import EvaluationResult

    sessions, mlc = session_factory(db_url), client(get_settings())
    spec = get_spec("plastic-detector", input_size=32)

    def reevaluate(champion):
        return evaluate(sessions, mlc, spec, "ds-1", version, lambda: dataset, None,
                        champion_version=champion)

    return asdict(promote(sessions, mlc, "plastic-detector", EvaluationResult(**evaluation),
                          PromotionPolicy(**policy), f"racer-{version}", reevaluate=reevaluate))


def main(path: str) -> int:
    spec = json.loads(Path(path).read_text())
    out = Path(spec["out"])
    import core.database  # noqa: F401 - imported once here, shared by every fork
    import core.registry  # noqa: F401
    import tasks.evaluate  # noqa: F401
    import tasks.promote  # noqa: F401

    racers = {}
    for version, evaluation in spec["racers"].items():
        pid = os.fork()
        if pid == 0:  # a racer
            code = 1
            try:
                result = race(spec["db_url"], Path(spec["dataset"]), version, evaluation,
                              spec["policy"])
                (out / f"{version}.json").write_text(json.dumps(result))
                code = 0
            except BaseException:  # noqa: BLE001 - the test reads it
                (out / f"{version}.err").write_text(traceback.format_exc())
            finally:
                os._exit(code)
        racers[pid] = version
    failed = []
    for pid, version in racers.items():
        _, status = os.waitpid(pid, 0)
        if status:
            failed.append(version)
    print(json.dumps({"failed": sorted(failed)}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
