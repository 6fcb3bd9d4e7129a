"""Ingestion throughput and memory against the raw baseline with the same processes, in one run.

OceanML's ingest (validate, hash, dedupe, copy into the lake, bulk insert, ledger) on N
simulated observations (JPEG + JSON sidecar), against what the same bytes and rows cost raw:
``cp`` + sha256 of the same files split across the same number of worker processes as
OceanML's ingest uses, then one ``executemany`` (SQLite) / ``COPY`` (PostgreSQL, when
``OCEANML_BENCH_PG_URL`` names a server: the bench makes and drops a database of its own
there) of the same rows. That equal-parallel raw time is the ratio's denominator; the
single-process raw time is printed beside it. Each ingest runs in a fresh process, so its
peak RSS (VmHWM, Linux) is its own; its reading workers' largest peak is shown beside it. 5k
and 20k show whether memory grows with the batch. ``OCEANML_INGEST_WORKERS`` sets the worker
processes (0, the default, is one per core, at most 8).

The peer a user would write by hand (``bench/peers/ingest.py``): the same checks (sidecar
schema and ranges, an image decode that detects truncation, the colour statistics, content
hash, blob write, row insert) done plainly, with as many worker processes, into the same
table. Goals: OceanML at least 0.9x of the peer and 0.5x of the raw copy, flat memory.

Where the time goes: the CPU time per observation of each step of OceanML's ingest (decode
and validate, hash, lake write, insert), measured step by step in one process on a sample,
and of each raw step (copy, sha256, insert).

    .venv/bin/python bench/ingest.py            # 5 000 and 20 000 observations, best of 2
    .venv/bin/python bench/ingest.py --quick    # 500 and 2 000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.spawn_probe import pose_as_main  # noqa: E402

# tests.postgres (SQLAlchemy) is imported where it is used: every worker process of either
# side re-runs this script as its main first, and should find it as light as a user's script.

END = datetime(2026, 11, 20, tzinfo=UTC)


def simulate_landing(root: Path, n: int) -> list[Path]:
    """``n`` observations as image + sidecar pairs under ``root``; returns the pair stems."""
    from core.store import filesystem
    from oceanml.simulator import simulate, write_landing

    devices, days = 20, 5
    per_day = -(-n // (devices * days))
    stream = (o for i, o in enumerate(simulate(days=days, devices=devices, per_day=per_day,
                                               end=END, seed=2)) if i < n)
    write_landing(filesystem(root.as_uri()), stream, faults=False)
    return sorted(p.with_suffix("") for p in root.rglob("*.jpg"))


def subset(stems: list[Path], src: Path, dest: Path, n: int) -> int:
    """Hard-link the first ``n`` pairs into ``dest``; returns their bytes."""
    total = 0
    for stem in stems[:n]:
        for suffix in (".jpg", ".json"):
            f = stem.with_suffix(suffix)
            target = dest / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(f, target)
            total += f.stat().st_size
    return total


def peak_kib(pid: int | str = "self") -> int:
    """A process's peak RSS (VmHWM). Not ``ru_maxrss``: Linux carries the parent's peak into a
    child started by vfork + exec (subprocess and multiprocessing's spawn both are), so a
    child of a big process would report the parent's size."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for process {pid}")


class ChildPeaks(threading.Thread):
    """The largest peak RSS among this process's children (the ingest workers), read while
    they live: once they have exited, nothing reliable is left to read."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.largest = 0
        self.done = threading.Event()

    def run(self) -> None:
        me = str(os.getpid())
        while not self.done.wait(0.2):
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    if stat.read_text().rsplit(")", 1)[1].split()[1] == me:
                        self.largest = max(self.largest, peak_kib(stat.parent.name))
                except (OSError, RuntimeError, IndexError):
                    pass  # it exited between the listing and the read

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.largest


def worker(landing: Path, home: Path, db_url: str | None) -> dict:
    """Runs in a child process: one ingest; its seconds, count and peak memory."""
    os.environ["OCEANML_HOME"] = str(home)
    os.environ["OCEANML_LANDING_URL"] = landing.as_uri()
    if db_url:
        os.environ["OCEANML_DB_URL"] = db_url
    from core.database import session_factory
    from core.settings import get_settings
    from tasks.ingest import ingest

    settings = get_settings()
    sessions = session_factory(settings.db_url)
    children = ChildPeaks()
    children.start()
    start = time.perf_counter()
    result = ingest(settings, sessions, now=END)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "ingested": result.ingested, "peak_kib": peak_kib(),
            "workers_peak_kib": children.stop()}


def deployed_worker(landing: Path, home: Path, db_url: str | None) -> dict:
    """``worker`` in a process whose ``__main__`` is what a deployment's flow run has:
    ``python -m prefect.engine``, which every spawned worker would import again."""
    pose_as_main("prefect.engine")
    return worker(landing, home, db_url)


def peer_worker(landing: Path, home: Path, db_url: str | None) -> dict:
    """Runs in a child process: the hand-written peer's ingest into a database OceanML's
    migrations made (before the timing); its seconds, count and peak memory."""
    from bench.peers import ingest as ingest_peer
    from core.database import session_factory
    from tasks.preparer import worker_count

    home.mkdir(parents=True, exist_ok=True)
    db = db_url or f"sqlite:///{home / 'peer.db'}"
    session_factory(db)  # the schema, as OceanML's ingest finds it
    target = db_url or str(home / "peer.db")
    workers = worker_count(int(os.environ.get("OCEANML_INGEST_WORKERS", "0")))
    children = ChildPeaks()
    children.start()
    start = time.perf_counter()
    stored, refused = ingest_peer.ingest(landing, home / "lake", target, workers, END)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "ingested": stored, "refused": refused, "peak_kib": peak_kib(),
            "workers_peak_kib": children.stop()}


def peer_steps(landing: Path, home: Path, db_url: str | None) -> dict[str, float]:
    """Runs in a child process: the peer's CPU milliseconds per observation, step by step."""
    from bench.peers import ingest as ingest_peer
    from core.database import session_factory

    home.mkdir(parents=True, exist_ok=True)
    session_factory(db_url or f"sqlite:///{home / 'peer.db'}")
    return ingest_peer.step_costs(landing, home / "lake", db_url or str(home / "peer.db"), END)


def _cp_sha256(pairs: list[tuple[Path, Path]]) -> tuple[float, float]:
    """Copy and hash each file; returns the CPU seconds of each of the two steps."""
    cp = sha = 0.0
    for f, target in pairs:
        t0 = time.process_time()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
        t1 = time.process_time()
        hashlib.sha256(f.read_bytes()).hexdigest()
        sha += time.process_time() - t1
        cp += t1 - t0
    return cp, sha


def baseline_files(landing: Path, dest: Path, workers: int) -> tuple[float, float, float]:
    """``cp`` + sha256 of every landing file, split across ``workers`` processes (one: in this
    process), in batches: the floor for moving and hashing the bytes. Returns wall seconds
    and the CPU seconds of copying and of hashing."""
    files = sorted(f for f in landing.rglob("*") if f.is_file())
    pairs = [(f, dest / f.relative_to(landing)) for f in files]
    batches = [pairs[i:i + 64] for i in range(0, len(pairs), 64)]
    pool = (ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if workers > 1
            else nullcontext())
    start = time.perf_counter()  # each side's pool starts inside its timing
    with pool:
        costs = list(pool.map(_cp_sha256, batches) if workers > 1 else map(_cp_sha256, batches))
        seconds = time.perf_counter() - start
    return seconds, sum(c for c, _ in costs), sum(s for _, s in costs)


def our_rows(home: Path, db_url: str | None) -> tuple[list[str], list[tuple]]:
    """The observation rows our ingest stored, to insert again the raw way."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url or f"sqlite:///{home / 'oceanml.db'}")
    with engine.connect() as conn:
        result = conn.execute(text("SELECT * FROM observations ORDER BY id"))
        columns = [c for c in result.keys() if c != "id"]  # noqa: SIM118 - a Result, not a dict
        rows = [tuple(r._mapping[c] for c in columns) for r in result]
    engine.dispose()
    return columns, rows


def baseline_sqlite(columns: list[str], rows: list[tuple], path: Path) -> tuple[float, float]:
    """One executemany of the rows into a fresh file; wall and CPU seconds."""
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE observations ({', '.join(columns)})")
    plain = [tuple(json.dumps(v) if isinstance(v, dict | list) else
                   v.isoformat() if isinstance(v, datetime) else v for v in r) for r in rows]
    start, cpu = time.perf_counter(), time.process_time()
    conn.executemany(f"INSERT INTO observations VALUES ({', '.join('?' * len(columns))})", plain)
    conn.commit()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    conn.close()
    return seconds, cpu


def baseline_pg_copy(columns: list[str], rows: list[tuple], url: str) -> tuple[float, float]:
    """One COPY of the rows into a copy of the table; wall and CPU (this process) seconds."""
    import psycopg

    conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    conn.execute("DROP TABLE IF EXISTS observations_raw")
    conn.execute("CREATE TABLE observations_raw AS SELECT * FROM observations WITH NO DATA")
    plain = [tuple(json.dumps(v) if isinstance(v, dict | list) else v for v in r) for r in rows]
    start, cpu = time.perf_counter(), time.process_time()
    with conn.cursor() as cur, cur.copy(
            f"COPY observations_raw ({', '.join(columns)}) FROM STDIN") as copy:
        for row in plain:
            copy.write_row(row)
    conn.commit()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    conn.close()
    return seconds, cpu


STEP_SAMPLE = 500  # observations the per-step costs are measured on (one ingest chunk)


def step_costs(landing: Path, home: Path, db_url: str | None) -> dict[str, float]:
    """Runs in a child process: CPU milliseconds per observation of each step of OceanML's
    ingest, the same functions ``tasks.landing.prepare_pair`` and ``tasks.ingest.store_chunk``
    call, timed one step at a time on the first ``STEP_SAMPLE`` pairs."""
    os.environ["OCEANML_HOME"] = str(home)
    os.environ["OCEANML_LANDING_URL"] = landing.as_uri()
    if db_url:
        os.environ["OCEANML_DB_URL"] = db_url
    from core.database import session_factory
    from core.settings import get_settings
    from core.store import content_key, filesystem, put_if_absent, read_bytes, sha256_hex
    from tasks.ingest import iter_new, store_chunk
    from tasks.landing import Prepared, _canonical
    from tasks.validate import (
        Limits,
        check_key,
        check_observation,
        decode_sidecar,
        inspect_image,
        observation_row,
    )

    settings = get_settings()
    sessions = session_factory(settings.db_url)
    location, lake = filesystem(settings.landing_url), filesystem(settings.lake_url)
    limits = Limits(now=END)
    candidates = [c for new, _ in iter_new(location, sessions) for c in new][:STEP_SAMPLE]
    cpu = dict.fromkeys(("read", "decode_validate", "hash", "lake_write", "insert"), 0.0)
    prepared = []

    def timed(step, fn, *args, **kwargs):
        t0 = time.process_time()
        out = fn(*args, **kwargs)
        cpu[step] += time.process_time() - t0
        return out

    for c in candidates:
        image = timed("read", read_bytes, location, c.image_key)
        raw = timed("read", read_bytes, location, c.sidecar_key)

        def validate(image=image, raw=raw, c=c):
            check_key(c.key)
            doc = decode_sidecar(raw)
            info = inspect_image(image, max_bytes=settings.max_image_bytes,
                                 max_pixels=settings.max_image_pixels)
            return doc, check_observation(doc, limits), info

        doc, sidecar, info = timed("decode_validate", validate)
        digest = timed("hash", sha256_hex, image, b"\0", _canonical(doc))
        key = content_key(digest, ".jpg")
        timed("lake_write", put_if_absent, lake, key, image)
        prepared.append(Prepared(c, c.key, digest, {
            **observation_row(sidecar), "image_width": info.width,
            "image_height": info.height, "image_stats": info.stats}, key))
    with sessions() as session:
        result = timed("insert", store_chunk, session, prepared, None)
    if result.ingested != len(candidates):
        raise RuntimeError(f"step costs stored {result.ingested} of {len(candidates)}")
    return {step: 1000 * seconds / len(candidates) for step, seconds in cpu.items()}


def run_child(mode: str, landing: Path, home: Path, db_url: str | None) -> dict:
    os.sync()  # the last side's writes reach the disk now, not during this side's timing
    args = [sys.executable, __file__, mode, str(landing), str(home)]
    if db_url:
        args.append(db_url)
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(n: int, stems: list[Path], src: Path, root: Path, server_url: str | None,
            repeat: int, workers: int, as_deployed: bool = False) -> dict:
    """Best of ``repeat`` for ours and for each raw step: disk write-back makes single runs of
    either side vary by up to 2x on a small machine."""
    from tests.postgres import throwaway_database

    tag = f"{'pg' if server_url else 'sqlite'}_{n / 1000:g}k"
    landing = root / f"landing-{tag}"
    nbytes = subset(stems, src, landing, n)
    runs, peer_runs, single_runs, parallel_runs, rows_runs = [], [], [], [], []
    for i in range(repeat):
        with (throwaway_database(server_url, "oceanml_bench") if server_url
              else nullcontext(None)) as db_url:
            peer_runs.append(run_child("--peer", landing, root / f"peer-{tag}-{i}", db_url))
        with (throwaway_database(server_url, "oceanml_bench") if server_url
              else nullcontext(None)) as db_url:
            home = root / f"home-{tag}-{i}"
            runs.append(run_child("--worker", landing, home, db_url))
            os.sync()
            single_runs.append(baseline_files(landing, root / f"cp1-{tag}-{i}", 1))
            os.sync()
            parallel_runs.append(baseline_files(landing, root / f"cpn-{tag}-{i}", workers))
            columns, rows = our_rows(home, db_url)
            rows_runs.append(baseline_pg_copy(columns, rows, db_url) if db_url
                             else baseline_sqlite(columns, rows, root / f"raw-{tag}-{i}.db"))
    if as_deployed:
        deployed = min((run_child("--as-deployed", landing, root / f"deployed-{tag}-{i}", None)
                        for i in range(repeat)), key=lambda r: r["seconds"])
        print(f"figure {tag}_oceanml_as_deployed_s {deployed['seconds']:.2f} s")
        print(f"figure {tag}_oceanml_as_deployed_largest_worker "
              f"{deployed['workers_peak_kib'] / 1024:.0f} MiB")
    ours = min(runs, key=lambda r: r["seconds"])
    ours["peak_kib"] = max(r["peak_kib"] for r in runs)
    peer = min(peer_runs, key=lambda r: r["seconds"])
    if peer["ingested"] != ours["ingested"]:
        raise RuntimeError(f"the peer stored {peer['ingested']} rows, OceanML "
                           f"{ours['ingested']}: not the same work")
    single = min(single_runs)
    parallel = min(parallel_runs)
    rows_s, rows_cpu = min(rows_runs)
    raw_single, raw_parallel = single[0] + rows_s, parallel[0] + rows_s
    insert = "pg_copy" if server_url else "executemany"  # "copy" is the files' step
    print(f"figure {tag}_ingested {ours['ingested']} count")
    print(f"figure {tag}_bytes {nbytes / 1e6:.1f} MB")
    print(f"figure {tag}_workers {workers} processes")
    print(f"figure {tag}_oceanml_s {ours['seconds']:.2f} s")
    print(f"figure {tag}_oceanml_rows_per_s {n / ours['seconds']:.0f} rows/s")
    print(f"figure {tag}_oceanml_MB_per_s {nbytes / 1e6 / ours['seconds']:.2f} MB/s")
    print(f"figure {tag}_peer_s {peer['seconds']:.2f} s")
    print(f"figure {tag}_peer_rows_per_s {n / peer['seconds']:.0f} rows/s")
    print(f"figure {tag}_peer_peak_rss {max(r['peak_kib'] for r in peer_runs) / 1024:.0f} MiB")
    print(f"figure {tag}_raw_cp_sha256_{workers}proc_s {parallel[0]:.2f} s")
    print(f"figure {tag}_raw_cp_sha256_1proc_s {single[0]:.2f} s")
    print(f"figure {tag}_raw_{insert}_s {rows_s:.2f} s")
    print(f"figure {tag}_raw_{workers}proc_rows_per_s {n / raw_parallel:.0f} rows/s")
    print(f"figure {tag}_raw_1proc_rows_per_s {n / raw_single:.0f} rows/s")
    print(f"figure {tag}_raw_cpu_ms_per_obs_copy {1000 * single[1] / n:.3f} ms")
    print(f"figure {tag}_raw_cpu_ms_per_obs_sha256 {1000 * single[2] / n:.3f} ms")
    print(f"figure {tag}_raw_cpu_ms_per_obs_{insert} {1000 * rows_cpu / n:.3f} ms")
    print(f"figure {tag}_peak_rss {ours['peak_kib'] / 1024:.0f} MiB")
    print(f"figure {tag}_peak_rss_largest_worker {ours['workers_peak_kib'] / 1024:.0f} MiB")
    print(f"figure {tag}_oceanml_vs_raw_1proc {raw_single / ours['seconds']:.3f} x")
    print(f"ratio {tag}_rows_per_s_vs_peer {peer['seconds'] / ours['seconds']:.3f} "
          "goal >= 0.9")
    print(f"ratio {tag}_rows_per_s_vs_raw_{workers}proc {raw_parallel / ours['seconds']:.3f} "
          "goal >= 0.5")
    return ours


def print_step_costs(stems: list[Path], src: Path, root: Path, server_url: str | None) -> None:
    from tests.postgres import throwaway_database

    tag = "pg" if server_url else "sqlite"
    landing = root / f"landing-steps-{tag}"
    subset(stems, src, landing, STEP_SAMPLE)
    with (throwaway_database(server_url, "oceanml_bench") if server_url
          else nullcontext(None)) as db_url:
        costs = run_child("--steps", landing, root / f"home-steps-{tag}", db_url)
    with (throwaway_database(server_url, "oceanml_bench") if server_url
          else nullcontext(None)) as db_url:
        peer = run_child("--peer-steps", landing, root / f"peer-steps-{tag}", db_url)
    for side, found in (("oceanml", costs), ("peer", peer)):
        for step, ms in found.items():
            print(f"figure {tag}_{side}_cpu_ms_per_obs_{step} {ms:.3f} ms")
        print(f"figure {tag}_{side}_cpu_ms_per_obs_total {sum(found.values()):.3f} ms")


def main() -> None:
    modes = {"--worker": worker, "--as-deployed": deployed_worker, "--steps": step_costs,
             "--peer": peer_worker, "--peer-steps": peer_steps}
    if len(sys.argv) > 1 and sys.argv[1] in modes:
        fn = modes[sys.argv[1]]
        out = fn(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
        if out is not None:
            print(json.dumps(out))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=2, help="best of N runs of each side")
    args = parser.parse_args()
    from core.settings import get_settings
    from tasks.preparer import worker_count

    workers = worker_count(get_settings().ingest_workers)
    small, large = (500, 2000) if args.quick else (5000, 20000)
    pg_url = os.environ.get("OCEANML_BENCH_PG_URL")
    with tempfile.TemporaryDirectory(prefix="oceanml-bench-ingest-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        stems = simulate_landing(root / "all", large)
        print(f"figure simulate_{large / 1000:g}k_s {time.perf_counter() - start:.1f} s")
        for server_url in [None] + ([pg_url] if pg_url else []):
            print_step_costs(stems, root / "all", root, server_url)
            peaks = [measure(n, stems, root / "all", root, server_url,
                             1 if args.quick else args.repeat, workers,
                             # start-up weighs most in the smallest run
                             as_deployed=server_url is None and n == small)["peak_kib"]
                     for n in (small, large)]
            tag = "pg" if server_url else "sqlite"
            print(f"ratio {tag}_peak_rss_{large / 1000:g}k_vs_{small / 1000:g}k "
                  f"{peaks[1] / peaks[0]:.3f} goal <= 1.1")


if __name__ == "__main__":
    main()
