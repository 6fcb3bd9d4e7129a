"""Enrichment against a slow, flaky OpenAI-compatible endpoint: throughput, losses, re-run cost.

A local OpenAI-protocol server on loopback answers after ``--latency`` seconds; 10% of answers
are 429 with Retry-After and 2% are 500, drawn per item and attempt from one seed, so every
concurrency level meets the same faults on the same items. The ideal wall time is the time
the answers take when ``concurrency`` requests are always in flight:
``http_requests * latency / concurrency``. A call waiting out Retry-After holds no request
slot (another item is asked meanwhile), so the waits are not in it; but no schedule finishes
before its slowest item (an item drawing two 429s takes 2.6 s alone), so the bound
``max(ideal, longest item)`` is reported too. Prints ``figure`` and ``ratio`` lines.

    .venv/bin/python bench/enrich.py            # 1 000 items at concurrency 16 and 64
    .venv/bin/python bench/enrich.py --quick    # 200 items
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SEED = 7  # the fault draws: one seed for every concurrency level


def populate(home: Path, items: int) -> object:
    """A fresh DB holding ``items`` ingested observations waiting for enrichment."""
    os.environ["OCEANML_HOME"] = str(home)
    from core.database import session_factory
    from core.settings import get_settings
    from core.store import filesystem
    from oceanml.simulator import simulate, write_landing
    from tasks.ingest import ingest

    get_settings.cache_clear()
    settings = get_settings()
    end = datetime(2026, 11, 20, tzinfo=UTC)
    per_day = -(-items // 10)
    write_landing(filesystem(settings.landing_url),
                  (o for i, o in enumerate(simulate(days=1, devices=10, per_day=per_day, end=end))
                   if i < items), faults=False)
    sessions = session_factory(settings.db_url)
    ingest(settings, sessions, now=end)
    return sessions


@contextmanager
def stub_process(latency: float, seed: int = SEED):
    """The OpenAI-protocol stub in its own process, so it does not share our GIL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.openai_server", "--latency", str(latency),
         "--mix", "429=0.10,500=0.02", "--seed", str(seed)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def stats(base_url: str) -> dict:
    return httpx.get(base_url + "/stats").json()


def run(items: int, concurrency: int, latency: float, root: Path) -> None:
    from core.openai_provider import OpenAIProvider
    from tasks.enrich import enrich

    class TimedProvider(OpenAIProvider):
        """Records the longest single item (its answers plus its retry waits)."""

        longest = 0.0

        def enrich(self, request):
            t0 = time.perf_counter()
            try:
                return super().enrich(request)
            finally:
                TimedProvider.longest = max(TimedProvider.longest, time.perf_counter() - t0)

    sessions = populate(root / f"c{concurrency}", items)
    with stub_process(latency) as base_url:
        provider = TimedProvider(base_url, "bench-model", "sk-bench", backoff_s=0.5,
                                 max_connections=concurrency)
        start = time.perf_counter()
        first = enrich(sessions, provider, concurrency=concurrency)
        wall = time.perf_counter() - start
        http_requests = stats(base_url)["requests"]
        ideal = http_requests * latency / concurrency  # waits hold no slot
        bound = max(ideal, provider.longest)  # no scheduler beats its slowest item
        start = time.perf_counter()
        enrich(sessions, provider, concurrency=concurrency)
        rerun = time.perf_counter() - start
        rerun_requests = stats(base_url)["requests"] - http_requests
    tag = f"c{concurrency}"
    lost = items - first.enriched - first.failed
    print(f"figure {tag}_items {items} count")
    print(f"figure {tag}_enriched {first.enriched} count")
    print(f"figure {tag}_failed_left_for_next_run {first.failed} count")
    print(f"figure {tag}_lost {lost} count")
    print(f"figure {tag}_http_requests {http_requests} count")
    print(f"figure {tag}_retry_wait_total {provider.usage.retry_wait_s:.1f} s")
    print(f"figure {tag}_wall {wall:.2f} s")
    print(f"figure {tag}_ideal {ideal:.2f} s")
    print(f"figure {tag}_items_per_s {first.enriched / wall:.1f} items/s")
    print(f"figure {tag}_rerun_wall {rerun:.3f} s")
    print(f"figure {tag}_rerun_requests {rerun_requests} count")
    print(f"figure {tag}_longest_item {provider.longest:.2f} s")
    print(f"ratio {tag}_wall_vs_ideal {wall / ideal:.3f} goal <= 1.15")
    print(f"ratio {tag}_wall_vs_critical_path_bound {wall / bound:.3f} goal <= 1.15")
    print(f"ratio {tag}_rerun_requests {rerun_requests} goal == 0")
    print(f"ratio {tag}_rerun_seconds {rerun:.3f} goal < 2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()
    items = 200 if args.quick else args.items
    with tempfile.TemporaryDirectory(prefix="oceanml-bench-enrich-") as tmp:
        for concurrency in (16, 64):
            run(items, concurrency, args.latency, Path(tmp))


if __name__ == "__main__":
    main()
