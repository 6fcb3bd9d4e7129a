"""Online serving: OceanML's endpoint against ``mlflow models serve`` of the same version.

One registered version (an untrained ResNet-18 OceanNet at the CPU seed size, 64 px) is
served twice on loopback, each by one server process on the same machine: ``oceanml serve``
(as shipped: checks, preprocessing, server-side batching, prediction log, metrics) and
``mlflow models serve --env-manager local`` (uvicorn, one worker, its default). Both get the
same simulated images; the load generator builds every request body before the clock starts
(OceanML: the JPEG as base64 JSON; MLflow: the same image already preprocessed to the float
tensor its signature takes, so MLflow is spared the decoding OceanML does), then keeps
``concurrency`` requests in flight until a fixed number has been answered. Figures:
requests/s, p50 and p99 latency, failures. Goal: >= 3x MLflow's requests/s at concurrency 16
and 64, with p99 no worse.

Then the promotion under load: while 16 clients keep asking OceanML, a new version is
registered and made champion. Goal: 0 failed requests and the first answer from the new
version within 2 poll intervals.

Releases: the same server with no release, with a 10% canary of a second version and with
a shadow of it (every request), in turns, three times each, concurrency 16, medians. Goals:
with the canary at least 0.9x the requests/s; with the shadow the champion's p99 at most 1.2x
(the shadow's predictions take only the idle moments; those skipped are counted).

Last, keys: the open server against a second one requiring a key of every request (its own
database; the same version), concurrency 16, three turns each, medians (goal: at least 0.95x
the requests/s, p99 within 5 %).

    .venv/bin/python bench/serve.py            # 1 500 requests per level (300 at 1)
    .venv/bin/python bench/serve.py --quick    # 100 (25 at 1), no level 64, one turn each
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent
END = datetime(2026, 11, 20, tzinfo=UTC)
SIZE = 64
POLL_S = 1.0
LEVELS = (1, 16, 64)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=REPO)


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> float:
    import httpx

    start_t = time.monotonic()
    while time.monotonic() - start_t < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - start_t
        except Exception:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout} s: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


async def load(url: str, bodies: list[bytes], concurrency: int, total: int,
               on_answer=None, headers: dict[str, str] | None = None) -> dict[str, float]:
    """Keep ``concurrency`` POSTs in flight until ``total`` are answered."""
    import httpx

    latencies: list[float] = []
    failed = 0
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        async def worker() -> None:
            nonlocal sent, failed
            while sent < total:
                body = bodies[sent % len(bodies)]
                sent += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, content=body,
                                          headers={"content-type": "application/json",
                                                   **(headers or {})})
                    ok = r.status_code == 200
                    if ok and on_answer:
                        on_answer(r)
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                failed += not ok

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"rps": len(latencies) / wall, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000,
            "failed": failed, "n": len(latencies)}


def bodies_for(images: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """(OceanML bodies, MLflow bodies) for the same images."""
    import json

    from models.preprocess import model_input

    ocean = [json.dumps({"image": base64.b64encode(d).decode()}).encode() for d in images]
    mlflow = [json.dumps({"inputs": (model_input(d, SIZE).float() / 255.0)[None].tolist()})
              .encode() for d in images]
    return ocean, mlflow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_500)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    total = 100 if args.quick else args.requests
    with tempfile.TemporaryDirectory(prefix="oceanml-bench-serve-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "OCEANML_HOME": str(root / "home"), "OCEANML_PROJECT_DIR": tmp,
               "OCEANML_SERVE_POLL_S": str(POLL_S), "PATH": f"{BIN}:{os.environ['PATH']}",
               "PREFECT_API_URL": ""}
        os.environ.update({k: env[k] for k in ("OCEANML_HOME", "OCEANML_PROJECT_DIR")})
        from bench.score import resnet18_net
        from core.registry import client, set_champion
        from core.settings import get_settings
        from core.store import filesystem
        from oceanml.simulator import simulate, write_landing
        from tests.registered import SPEC, register

        get_settings.cache_clear()
        settings = get_settings()
        landing = filesystem(settings.landing_url)
        write_landing(landing, simulate(days=1, devices=4, per_day=64, end=END), faults=False)
        images = [landing.fs.cat_file(p) for p in sorted(landing.fs.find(landing.root))
                  if p.endswith(".jpg")][:256]  # a canary's share is drawn per image
        mlc = client(settings)
        v1 = register(mlc, settings, resnet18_net(), "bench-v1", size=SIZE)
        set_champion(mlc, SPEC.name, v1)
        ocean_bodies, mlflow_bodies = bodies_for(images)
        print(f"figure distinct_images {len(images)} images")

        ocean_port, mlflow_port = free_port(), free_port()
        ocean = start([str(BIN / "oceanml"), "serve", "--port", str(ocean_port), "--models",
                       SPEC.name, "--device", "cpu"], env, root / "oceanml.log")
        mlflow = start([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{SPEC.name}/{v1}",
                        "--env-manager", "local", "-h", "127.0.0.1", "-p", str(mlflow_port)],
                       {**env, "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri},
                       root / "mlflow.log")
        try:
            ocean_url = f"http://127.0.0.1:{ocean_port}"
            mlflow_url = f"http://127.0.0.1:{mlflow_port}"
            print(f"figure oceanml_ready_s {wait_http(ocean_url + '/health/ready', ocean, root / 'oceanml.log'):.1f} s")
            print(f"figure mlflow_ready_s {wait_http(mlflow_url + '/ping', mlflow, root / 'mlflow.log'):.1f} s")
            predict = f"{ocean_url}/v1/models/{SPEC.name}/predict"
            invocations = f"{mlflow_url}/invocations"
            levels = LEVELS[:2] if args.quick else LEVELS  # quick: a guard that it runs
            for c in levels:  # warm-up, untimed
                asyncio.run(load(predict, ocean_bodies, c, 2 * c))
                asyncio.run(load(invocations, mlflow_bodies, c, 2 * c))
            results = {}
            for c in levels:
                n = max(total // 4, 20) if c == 1 else total
                results[c] = {"oceanml": asyncio.run(load(predict, ocean_bodies, c, n)),
                              "mlflow": asyncio.run(load(invocations, mlflow_bodies, c, n))}
                for side, r in results[c].items():
                    print(f"figure {side}_c{c}_rps {r['rps']:.1f} req/s")
                    print(f"figure {side}_c{c}_p50 {r['p50_ms']:.1f} ms")
                    print(f"figure {side}_c{c}_p99 {r['p99_ms']:.1f} ms")
                    print(f"figure {side}_c{c}_failed {r['failed']} requests")
            stop(mlflow)
            releases = releases_under_load(mlc, settings, ocean_url, predict, ocean_bodies,
                                           total, 1 if args.quick else ROUNDS)
            promotion = promote_under_load(mlc, settings, predict, ocean_bodies, total)
            keys = keys_on_and_off(env, root, settings, predict, ocean_bodies, total,
                                   1 if args.quick else ROUNDS)
        finally:
            for proc in (ocean, mlflow):
                if proc.poll() is None:
                    stop(proc)
    for c in levels[1:]:
        o, m = results[c]["oceanml"], results[c]["mlflow"]
        print(f"ratio rps_vs_mlflow_c{c} {o['rps'] / m['rps']:.2f} goal >= 3")
        print(f"ratio p99_vs_mlflow_c{c} {o['p99_ms'] / m['p99_ms']:.2f} goal <= 1")
    for side, r in releases.items():
        print(f"figure release_{side}_c16_rps {r['rps']:.1f} req/s")
        print(f"figure release_{side}_c16_p99 {r['p99_ms']:.1f} ms")
        print(f"figure release_{side}_c16_failed {r['failed']} requests")
        print(f"figure release_{side}_c16_candidate_share {r['candidate_share']:.3f} share")
    print(f"figure release_shadow_skipped {releases['shadow']['skipped']:.0f} predictions")
    print(f"ratio canary_vs_none_rps_c16 {releases['canary']['rps'] / releases['none']['rps']:.2f} "
          "goal >= 0.9")
    print(f"ratio shadow_vs_none_p99_c16 "
          f"{releases['shadow']['p99_ms'] / releases['none']['p99_ms']:.2f} goal <= 1.2")
    print(f"figure promotion_requests {promotion['n']} requests")
    print(f"figure promotion_failed {promotion['failed']} requests")
    print(f"ratio promotion_failed_requests {promotion['failed']} goal == 0")
    print(f"figure promotion_first_new_answer_s {promotion['first_new_s']:.2f} s")
    print(f"ratio promotion_first_new_answer_in_poll_intervals "
          f"{promotion['first_new_s'] / POLL_S:.2f} goal <= 2")
    for side, r in keys.items():
        print(f"figure keys_{side}_c16_rps {r['rps']:.1f} req/s")
        print(f"figure keys_{side}_c16_p99 {r['p99_ms']:.1f} ms")
        print(f"figure keys_{side}_c16_failed {r['failed']} requests")
    print(f"ratio keys_on_vs_off_rps_c16 {keys['on']['rps'] / keys['off']['rps']:.2f} goal >= 0.95")
    print(f"ratio keys_on_vs_off_p99_c16 {keys['on']['p99_ms'] / keys['off']['p99_ms']:.2f} "
          "goal <= 1.05")


ROUNDS = 3  # turns of each side in the keys comparison


def keys_on_and_off(env: dict[str, str], root: Path, settings, open_predict: str,
                    bodies: list[bytes], total: int, turns: int) -> dict:
    """The open server against a second one that requires a key of every request: the same
    version from the same MLflow, each with an OceanML database of its own (keys live there,
    and a server that has seen one stays locked, so one server cannot be measured open after
    keyed). Concurrency 16, in turns, ``turns`` times each, so the machine's drift over the
    run falls on both sides; each side's median requests/s and p99."""
    import httpx

    from core.access import Scope
    from core.database import session_factory
    from core.keys import create_key
    from tests.registered import SPEC

    keyed_db = f"sqlite:///{root / 'keyed.db'}"
    key = create_key(session_factory(keyed_db), "bench", Scope.predict, rate=1e6)[0]
    port, log = free_port(), root / "keyed.log"
    keyed = start([str(BIN / "oceanml"), "serve", "--port", str(port), "--models", SPEC.name,
                   "--device", "cpu"],
                  {**env, "OCEANML_DB_URL": keyed_db,
                   "OCEANML_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri}, log)
    try:
        url = f"http://127.0.0.1:{port}"
        print(f"figure keyed_ready_s {wait_http(url + '/health/ready', keyed, log):.1f} s")
        keyed_predict = f"{url}/v1/models/{SPEC.name}/predict"
        refused = httpx.post(keyed_predict, content=bodies[0],
                             headers={"content-type": "application/json"})
        if refused.status_code != 401:
            raise RuntimeError(f"the keyed server answered {refused.status_code} without a key")
        auth = {"Authorization": f"Bearer {key}"}
        asyncio.run(load(keyed_predict, bodies, 16, 32, headers=auth))  # its one scrypt check
        asyncio.run(load(open_predict, bodies, 16, 32))
        rounds: dict[str, list[dict]] = {"off": [], "on": []}
        for _ in range(turns):
            rounds["off"].append(asyncio.run(load(open_predict, bodies, 16, total)))
            rounds["on"].append(asyncio.run(load(keyed_predict, bodies, 16, total,
                                                 headers=auth)))
    finally:
        stop(keyed)
    return {side: {"rps": statistics.median(r["rps"] for r in runs),
                   "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                   "failed": sum(r["failed"] for r in runs)} for side, runs in rounds.items()}


def releases_under_load(mlc, settings, url: str, predict: str, bodies: list[bytes],
                        total: int, turns: int) -> dict:
    """No release, a 10% canary and a shadow of a second version, in turns (``turns`` each,
    concurrency 16): each side's median requests/s and p99, the share the candidate answered
    (canary) and the shadow predictions skipped for want of an idle moment."""
    import httpx

    from core.database import session_factory
    from core.releases import ABORTED, start_release
    from core.releases import end_release as end
    from tests.registered import SPEC, register

    candidate = register(mlc, settings, resnet18_candidate(), "bench-candidate", size=SIZE)
    sessions = session_factory(settings.db_url)

    def follow(release: dict | None) -> None:
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/v1/models").json()["models"][0]["release"] != release:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not follow the release {release}")
            time.sleep(0.1)

    def skipped() -> float:
        text = httpx.get(f"{url}/metrics").text
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("oceanml_shadow_skipped_total"))

    def side(mode: str | None) -> dict:
        release = None
        if mode is not None:
            release = start_release(sessions, SPEC.name, candidate, "1", mode,
                                    0.1 if mode == "canary" else 1.0,
                                    timedelta(hours=1), "bench")
            follow({"id": release.id, "mode": mode, "share": release.share,
                    "candidate_version": candidate})
        answered: dict[str, int] = {}

        def count(response) -> None:
            version = response.json()["version"]
            answered[version] = answered.get(version, 0) + 1

        before = skipped()
        try:
            result = asyncio.run(load(predict, bodies, 16, total, count))
        finally:
            if release is not None:
                end(sessions, release.id, ABORTED, "bench turn over", "bench")
                follow(None)
        result["candidate_share"] = answered.get(candidate, 0) / max(sum(answered.values()), 1)
        result["skipped"] = skipped() - before
        return result

    asyncio.run(load(predict, bodies, 16, 32))
    rounds: dict[str, list[dict]] = {"none": [], "canary": [], "shadow": []}
    for _ in range(turns):
        for mode in rounds:
            rounds[mode].append(side(None if mode == "none" else mode))
    return {mode: {"rps": statistics.median(r["rps"] for r in runs),
                   "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                   "failed": sum(r["failed"] for r in runs),
                   "candidate_share": statistics.median(r["candidate_share"] for r in runs),
                   "skipped": sum(r["skipped"] for r in runs)} for mode, runs in rounds.items()}


def resnet18_candidate():
    """A second version of the same architecture (other weights, the same cost per image)."""
    import torch

    torch.manual_seed(11)
    from bench.score import resnet18_net

    return resnet18_net()


def promote_under_load(mlc, settings, predict: str, bodies: list[bytes], total: int) -> dict:
    """16 clients ask OceanML; after a second, v2 becomes champion. Failures and how long
    until the first answer from v2, counted from the alias move."""
    from bench.score import resnet18_net
    from core.registry import set_champion
    from tests.registered import SPEC, register

    v2 = register(mlc, settings, resnet18_net(), "bench-v2", size=SIZE)  # before the clock
    state = {"moved_at": None, "first_new": None}

    def on_answer(response) -> None:
        if (state["moved_at"] is not None and state["first_new"] is None
                and response.json()["version"] == v2):
            state["first_new"] = time.monotonic()

    async def run() -> dict:
        async def promote_later() -> None:
            await asyncio.sleep(1.0)
            await asyncio.to_thread(set_champion, mlc, SPEC.name, v2)
            state["moved_at"] = time.monotonic()

        result, _ = await asyncio.gather(load(predict, bodies, 16, max(total, 400), on_answer),
                                         promote_later())
        return result

    result = asyncio.run(run())
    first = state["first_new"]
    result["first_new_s"] = (first - state["moved_at"]) if first else float("inf")
    return result


if __name__ == "__main__":
    main()
