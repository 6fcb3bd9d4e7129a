"""Batch scoring throughput: OceanML's score stage against peers over the same images.

N simulated observations are ingested (not timed) and an untrained ResNet-18 OceanNet at the
CPU seed size (64 px) is registered as the trainer registers versions. Then, on the same
images, in one process, with the same torch threads:

- ``oceanml``: :func:`tasks.score.score_rows`, what the score task runs once the champion is
  loaded: lake reads, the training preprocessing, batches of ``OCEANML_SCORE_BATCH_SIZE``,
  the forward pass, ``predictions`` rows written per batch; and :func:`tasks.score.score_model`
  end to end (finding the pending rows and loading the version from MLflow included);
- ``handwritten``: the same work as a plain loop (read, preprocess, forward, softmax,
  ``executemany`` insert of the same rows): the equal-work peer;
- ``bare``: the forward pass (and softmax) alone over the same decoded batches, the ceiling.

Each side runs three times, alternating, on rows it has not scored (a version per round),
after an untimed warm-up; the median is reported. ``score_model`` runs once (its version load
is part of what it measures).

    .venv/bin/python bench/score.py            # 4 000 observations
    .venv/bin/python bench/score.py --quick    # 200
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
END = datetime(2026, 11, 20, tzinfo=UTC)
SIZE = 64
ROUNDS = 3  # median of three alternating rounds per side


def resnet18_net():
    from models.backbones import build_backbone
    from models.net import OceanNet
    from tests.registered import SPEC

    backbone, features = build_backbone("resnet18", None)
    return OceanNet(backbone, features, SPEC.num_outputs, SPEC.task).eval()


def handwritten(sessions, predictor, rows, lake, batch_size: int, version: str) -> int:
    """Read, preprocess, forward, softmax and insert, as a plain loop: the equal-work peer."""
    import torch
    from sqlalchemy import insert

    from core.db import Prediction
    from models.preprocess import model_input

    classes = predictor.spec.outputs
    net = predictor.net
    written = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        images = torch.stack([model_input(lake.fs.cat_file(lake.path(key)), SIZE)
                              for _, key, _ in chunk])
        with torch.inference_mode():
            probs = torch.softmax(net(images), dim=1).numpy()
        batch = [{"observation_id": obs, "model_name": predictor.name, "model_version": version,
                  "label": classes[int(p.argmax())],
                  "probabilities": {c: float(v) for c, v in zip(classes, p, strict=True)},
                  "source": "batch", "scored_at": datetime.now(UTC)}
                 for (obs, _, _), p in zip(chunk, probs, strict=True)]
        with sessions() as session:
            session.execute(insert(Prediction), batch)
            session.commit()
        written += len(batch)
    return written


def bare(net, batches) -> None:
    import torch

    with torch.inference_mode():
        for images in batches:
            torch.softmax(net(images), dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=int, default=4_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 200 if args.quick else args.observations
    with tempfile.TemporaryDirectory(prefix="oceanml-bench-score-") as tmp:
        os.environ.update(OCEANML_HOME=str(Path(tmp) / "home"),
                          OCEANML_PROJECT_DIR=str(Path(tmp)))
        import torch

        from bench.dataset import land
        from core.database import session_factory
        from core.hardware import Hardware
        from core.registry import client, set_champion
        from core.settings import get_settings
        from core.store import filesystem
        from models.predictor import load_predictor
        from models.preprocess import model_input
        from tasks.score import pending, score_model, score_rows
        from tests.registered import SPEC, register

        get_settings.cache_clear()
        settings = get_settings()
        sessions = session_factory(settings.db_url)
        land(settings, sessions, n, days=4, end=END, seed=5)
        mlc = client(settings)
        net = resnet18_net()
        versions = [register(mlc, settings, net, f"bench-{k}", size=SIZE) for k in range(ROUNDS + 2)]
        predictor = load_predictor(mlc, SPEC.name, versions[0], device="cpu")
        lake = filesystem(settings.lake_url)
        rows = pending(sessions, SPEC.name, versions[0])
        batch = settings.score_batch_size
        workers = min(Hardware.from_settings(settings).loader_workers(), len(rows) // 256)
        print(f"figure images {len(rows)} images")
        print(f"figure torch_threads {torch.get_num_threads()} threads")
        print(f"figure loader_workers {workers} processes")

        batches = [torch.stack([model_input(lake.fs.cat_file(lake.path(k)), SIZE)
                                for _, k, _ in rows[i:i + batch]])
                   for i in range(0, len(rows), batch)]
        # warm-up, untimed: first calls allocate and import; each side on rows of its own
        warm = rows[: 2 * batch]
        bare(predictor.net, batches[:2])
        handwritten(sessions, predictor, warm, lake, batch, "peer-warm-up")
        score_rows(sessions, load_predictor(mlc, SPEC.name, versions[-1], device="cpu"), warm,
                   lake, batch_size=batch, workers=workers, flow_run_id=None)

        times: dict[str, list[float]] = {"bare": [], "handwritten": [], "oceanml": []}
        for k in range(ROUNDS):  # sides alternate, so drift in the machine hits both
            start = time.perf_counter()
            bare(predictor.net, batches)
            times["bare"].append(time.perf_counter() - start)

            start = time.perf_counter()
            written = handwritten(sessions, predictor, rows, lake, batch, f"peer-{k}")
            times["handwritten"].append(time.perf_counter() - start)

            mine = load_predictor(mlc, SPEC.name, versions[k], device="cpu")  # unscored rows
            start = time.perf_counter()
            result = score_rows(sessions, mine, rows, lake, batch_size=batch, workers=workers,
                                flow_run_id=None)
            times["oceanml"].append(time.perf_counter() - start)
            assert result.scored == written == len(rows), (result, written)

        set_champion(mlc, SPEC.name, versions[ROUNDS])
        start = time.perf_counter()
        whole = score_model(sessions, mlc, settings, SPEC.name)
        times["score_model"] = [time.perf_counter() - start]
        assert whole.scored == len(rows), whole

        rate = {name: len(rows) / statistics.median(t) for name, t in times.items()}
        for name, value in rate.items():
            print(f"figure {name}_images_per_s {value:.1f} images/s")
    print(f"ratio oceanml_vs_handwritten {rate['oceanml'] / rate['handwritten']:.3f} goal >= 0.9")
    print(f"ratio oceanml_vs_bare_forward {rate['oceanml'] / rate['bare']:.3f} goal >= 0.9")
    print(f"ratio score_model_vs_bare_forward {rate['score_model'] / rate['bare']:.3f} "
          "goal >= 0.9")


if __name__ == "__main__":
    main()
