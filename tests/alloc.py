"""Allocation measured in a fresh interpreter, for the "no per-hop allocation" tests."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def allocated_by(imports: str, setup: str, step: str, steps: int = 1000) -> tuple[int, int]:
    """(peak, still held) bytes that `steps` runs of `step` allocate after one warm-up run,
    traced by tracemalloc in a fresh interpreter: in the test process, threads left by other
    tests (capture loops, servers) would allocate meanwhile and land in the peak."""
    code = "\n".join(["import tracemalloc", "import numpy as np", imports, setup, step,
                       "tracemalloc.start()", "before = tracemalloc.get_traced_memory()[0]",
                       f"for i in range({steps}):", f"    {step}",
                       "current, peak = tracemalloc.get_traced_memory()", "print(peak - before, current - before)"])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    peak, held = proc.stdout.split()
    return int(peak), int(held)
