"""Ingestion throughput and memory against the raw baseline, in one run.

OceanML's ingest (validate, hash, dedupe, copy into the lake, bulk insert, ledger) on N
simulated observations (JPEG + JSON sidecar), against what the same bytes and rows cost raw:
``cp`` + sha256 of the same files, and ``executemany`` (SQLite) / ``COPY`` (PostgreSQL, when
``OCEANML_BENCH_PG_URL`` is set) of the same rows. Each ingest runs in a fresh process, so its
peak RSS (VmHWM, Linux) is its own; its reading workers' largest peak is shown beside it. 5k
and 20k show whether memory grows with the batch. ``OCEANML_INGEST_WORKERS`` sets the worker
processes (0, the default, is one per core).

    .venv/bin/python bench/ingest.py            # 5 000 and 20 000 observations, best of 2
    .venv/bin/python bench/ingest.py --quick    # 1 000 and 4 000
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
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
END = datetime(2026, 11, 20, tzinfo=UTC)


def simulate_landing(root: Path, n: int) -> list[Path]:
    """``n`` observations as image + sidecar pairs under ``root``; returns the pair stems."""
    from oceanml.simulator import simulate, write_landing
    from oceanml.store import filesystem

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


def worker(landing: Path, home: Path, db_url: str | None) -> None:
    """Runs in a child process: one ingest, prints seconds and counts as JSON."""
    os.environ["OCEANML_HOME"] = str(home)
    os.environ["OCEANML_LANDING_URL"] = landing.as_uri()
    if db_url:
        os.environ["OCEANML_DB_URL"] = db_url
    from oceanml.db import session_factory
    from oceanml.settings import get_settings
    from tasks.ingest import ingest

    settings = get_settings()
    sessions = session_factory(settings.db_url)
    children = ChildPeaks()
    children.start()
    start = time.perf_counter()
    result = ingest(settings, sessions, now=END)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "ingested": result.ingested, "peak_kib": peak_kib(),
                      "workers_peak_kib": children.stop(), "workers": settings.ingest_workers}))


def run_worker(landing: Path, home: Path, db_url: str | None) -> dict:
    args = [sys.executable, __file__, "--worker", str(landing), str(home)]
    if db_url:
        args.append(db_url)
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def baseline_files(landing: Path, dest: Path) -> float:
    """``cp`` + sha256 of every landing file: the floor for moving and hashing the bytes."""
    start = time.perf_counter()
    for f in landing.rglob("*"):
        if f.is_file():
            target = dest / f.relative_to(landing)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
            hashlib.sha256(f.read_bytes()).hexdigest()
    return time.perf_counter() - start


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


def baseline_sqlite(columns: list[str], rows: list[tuple], path: Path) -> float:
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE observations ({', '.join(columns)})")
    plain = [tuple(json.dumps(v) if isinstance(v, dict | list) else
                   v.isoformat() if isinstance(v, datetime) else v for v in r) for r in rows]
    start = time.perf_counter()
    conn.executemany(f"INSERT INTO observations VALUES ({', '.join('?' * len(columns))})", plain)
    conn.commit()
    seconds = time.perf_counter() - start
    conn.close()
    return seconds


def baseline_pg_copy(columns: list[str], rows: list[tuple], url: str) -> float:
    import psycopg

    conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    conn.execute("DROP TABLE IF EXISTS observations_raw")
    conn.execute("CREATE TABLE observations_raw AS SELECT * FROM observations WITH NO DATA")
    plain = [tuple(json.dumps(v) if isinstance(v, dict | list) else v for v in r) for r in rows]
    start = time.perf_counter()
    with conn.cursor() as cur, cur.copy(
            f"COPY observations_raw ({', '.join(columns)}) FROM STDIN") as copy:
        for row in plain:
            copy.write_row(row)
    conn.commit()
    seconds = time.perf_counter() - start
    conn.close()
    return seconds


def reset_pg(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()


def measure(n: int, stems: list[Path], src: Path, root: Path, db_url: str | None,
            repeat: int) -> dict:
    """Best of ``repeat`` for ours and for each raw step: disk write-back makes single runs of
    either side vary by up to 2x on a small machine."""
    tag = f"{'pg' if db_url else 'sqlite'}_{n // 1000}k"
    landing = root / f"landing-{tag}"
    nbytes = subset(stems, src, landing, n)
    runs, files_runs, rows_runs = [], [], []
    for i in range(repeat):
        if db_url:
            reset_pg(db_url)
        home = root / f"home-{tag}-{i}"
        runs.append(run_worker(landing, home, db_url))
        files_runs.append(baseline_files(landing, root / f"cp-{tag}-{i}"))
        columns, rows = our_rows(home, db_url)
        rows_runs.append(baseline_pg_copy(columns, rows, db_url) if db_url
                         else baseline_sqlite(columns, rows, root / f"raw-{tag}-{i}.db"))
    ours = min(runs, key=lambda r: r["seconds"])
    ours["peak_kib"] = max(r["peak_kib"] for r in runs)
    files_s, rows_s = min(files_runs), min(rows_runs)
    raw_total = files_s + rows_s
    print(f"figure {tag}_ingested {ours['ingested']} count")
    print(f"figure {tag}_bytes {nbytes / 1e6:.1f} MB")
    print(f"figure {tag}_oceanml_s {ours['seconds']:.2f} s")
    print(f"figure {tag}_oceanml_rows_per_s {n / ours['seconds']:.0f} rows/s")
    print(f"figure {tag}_oceanml_MB_per_s {nbytes / 1e6 / ours['seconds']:.2f} MB/s")
    print(f"figure {tag}_raw_cp_sha256_s {files_s:.2f} s")
    print(f"figure {tag}_raw_{'copy' if db_url else 'executemany'}_s {rows_s:.2f} s")
    print(f"figure {tag}_raw_rows_per_s {n / raw_total:.0f} rows/s")
    print(f"figure {tag}_peak_rss {ours['peak_kib'] / 1024:.0f} MiB")
    print(f"figure {tag}_peak_rss_largest_worker {ours['workers_peak_kib'] / 1024:.0f} MiB")
    print(f"ratio {tag}_rows_per_s_vs_raw {raw_total / ours['seconds']:.3f} goal >= 0.8")
    return ours


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=2, help="best of N runs of each side")
    args = parser.parse_args()
    small, large = (1000, 4000) if args.quick else (5000, 20000)
    pg_url = os.environ.get("OCEANML_BENCH_PG_URL")
    with tempfile.TemporaryDirectory(prefix="oceanml-bench-ingest-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        stems = simulate_landing(root / "all", large)
        print(f"figure simulate_{large // 1000}k_s {time.perf_counter() - start:.1f} s")
        for db_url in [None] + ([pg_url] if pg_url else []):
            peaks = [measure(n, stems, root / "all", root, db_url,
                             1 if args.quick else args.repeat)["peak_kib"]
                     for n in (small, large)]
            tag = "pg" if db_url else "sqlite"
            print(f"ratio {tag}_peak_rss_{large // 1000}k_vs_{small // 1000}k "
                  f"{peaks[1] / peaks[0]:.3f} goal <= 1.1")


if __name__ == "__main__":
    main()
