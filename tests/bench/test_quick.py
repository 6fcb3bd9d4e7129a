"""Every benchmark runs with --quick and prints well-formed figure and ratio lines.

The figures are recorded in issue notes, never asserted here: this only guards the scripts
against rot (README.md, Benchmarks).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
FIGURE = re.compile(r"^figure \S+ -?[\d.]+(e[-+]?\d+)? \S+$")
RATIO = re.compile(r"^ratio \S+ -?[\d.]+ goal (>=|<=|<|>|==) [\d.]+$")


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "bench").glob("*.py")))
def test_benchmark_quick_run(script: str) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), "--quick"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("figure", "ratio"))]
    assert any(line.startswith("ratio") for line in lines), proc.stdout
    bad = [line for line in lines if not (FIGURE.match(line) or RATIO.match(line))]
    assert not bad, bad
