"""Device uploads: through the API against writing the same files into the landing folder.

The same simulated observations (image and sidecar) are delivered twice at each concurrency
level (1 and 16 clients, threads of this process): by ``POST /v1/observations`` to one
``oceanml serve --only-observations`` process on loopback (as shipped: ingest keys, the
ingestion checks, content-addressed landing keys, the "already received" lookup), and by
writing each pair into a landing folder directly (what a device with the bucket's
credentials does, with no check). Figures: uploads/s and p99 per side. Goal: the API at
least 0.5x the direct writes at 16 clients. Then the next ingest: every accepted upload is
ingested exactly once (goal: ingested == accepted, and a second ingest finds nothing new).

    .venv/bin/python bench/upload.py            # 800 observations per level
    .venv/bin/python bench/upload.py --quick    # 160
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.serve import free_port, start, stop, wait_http  # noqa: E402

BIN = Path(sys.executable).parent
END = datetime(2026, 11, 20, tzinfo=UTC)
LEVELS = (1, 16)


def timed(work, items: list, clients: int) -> dict[str, float]:
    """``work(item)`` for every item on ``clients`` threads: items/s and latency p99."""
    latencies: list[float] = []

    def one(item) -> bool:
        t0 = time.perf_counter()
        ok = work(item)
        latencies.append(time.perf_counter() - t0)
        return ok

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        oks = list(pool.map(one, items))
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"per_s": len(items) / wall, "p99_ms": q[98] * 1000, "failed": oks.count(False)}


def direct_writer(landing: Path):
    """The peer: write the pair under the device's day folder, as the simulator does."""
    from oceanml.simulator import observation_keys

    def write(obs) -> bool:
        image_key, sidecar_key = observation_keys(obs)
        for key, data in ((image_key, obs.image),
                          (sidecar_key, json.dumps(obs.sidecar()).encode())):
            path = landing / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return True

    return write


def api_uploader(url: str, keys: dict[str, str]):
    """OceanML: one POST per observation with its device's key, a client per thread."""
    import threading

    import httpx

    from oceanml.device_client import upload_parts

    local = threading.local()

    def upload(obs) -> bool:
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=url, timeout=60)
        r = local.http.post("/v1/observations", files=upload_parts(
            obs.image, obs.sidecar(), obs.stem),
            headers={"Authorization": f"Bearer {keys[obs.device.device_id]}"})
        return r.status_code == 202

    return upload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=int, default=800)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 160 if args.quick else args.observations
    with tempfile.TemporaryDirectory(prefix="oceanml-bench-upload-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "OCEANML_HOME": str(root / "home"), "OCEANML_PROJECT_DIR": tmp,
               "PREFECT_API_URL": "", "OCEANML_SERVE_KEY_RATE": "100000"}
        os.environ.update({k: env[k] for k in ("OCEANML_HOME", "OCEANML_PROJECT_DIR")})
        from core.access import Scope
        from core.database import session_factory
        from core.keys import create_key
        from core.settings import get_settings
        from oceanml.simulator import simulate
        from tasks.ingest import ingest

        get_settings.cache_clear()
        settings = get_settings()
        sessions = session_factory(settings.db_url)
        devices = 8
        per_level = {c: list(simulate(days=1, devices=devices, per_day=n // devices, end=END,
                                      seed=c)) for c in LEVELS}  # distinct per level: no resend
        ids = sorted({o.device.device_id for obs in per_level.values() for o in obs})
        keys = {d: create_key(sessions, f"dev-{d}", Scope.ingest, device_id=d)[0] for d in ids}
        port = free_port()
        server = start([str(BIN / "oceanml"), "serve", "--only-observations", "--port",
                        str(port)], env, root / "serve.log")
        try:
            url = f"http://127.0.0.1:{port}"
            print(f"figure server_ready_s {wait_http(url + '/health/ready', server, root / 'serve.log'):.1f} s")
            upload = api_uploader(url, keys)
            warm = list(simulate(days=1, devices=devices, per_day=1, end=END, seed=99))
            timed(upload, warm, 4)  # each key's scrypt check, connections: untimed
            results = {}
            for c in LEVELS:
                peer_dir = root / f"direct-{c}"
                results[c] = {"direct": timed(direct_writer(peer_dir), per_level[c], c),
                              "api": timed(upload, per_level[c], c)}
                for side, r in results[c].items():
                    print(f"figure {side}_c{c}_uploads_per_s {r['per_s']:.1f} obs/s")
                    print(f"figure {side}_c{c}_p99 {r['p99_ms']:.1f} ms")
                    print(f"figure {side}_c{c}_failed {r['failed']} observations")
        finally:
            stop(server)
        accepted = sum(len(obs) - results[c]["api"]["failed"] for c, obs in per_level.items())
        accepted += len(warm)
        now = END + timedelta(days=1)
        first = ingest(settings, sessions, now=now)
        second = ingest(settings, sessions, now=now)
    print(f"figure accepted {accepted} observations")
    print(f"figure ingested {first.ingested} observations")
    print(f"figure ingested_again {second.ingested} observations")
    ratio = {c: results[c]["api"]["per_s"] / results[c]["direct"]["per_s"] for c in LEVELS}
    print(f"figure api_vs_direct_c1 {ratio[1]:.2f} x")
    print(f"ratio api_vs_direct_c16 {ratio[16]:.2f} goal >= 0.5")
    print(f"ratio ingested_vs_accepted {first.ingested / max(accepted, 1):.2f} goal == 1")
    print(f"ratio ingested_again {second.ingested} goal == 0")


if __name__ == "__main__":
    main()
