"""The RAM budget: the avemo-edge process of the default pipeline (numpy backend, both shipped
students, the CNN detector) peaks within the x86 profile's budget.ram_mb on the demo replay and
on a camera stream (MJPEG over HTTP from a separate ffmpeg), each in a fresh process
(tools/bench_child.py, the scenarios tools/bench.py reports). Linux only (/proc/self/status)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.profiles import load_profile

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tools" / "bench_child.py"

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists() or shutil.which("ffmpeg") is None,
                                reason="peak RSS needs Linux's /proc and ffmpeg")


def _scenario(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(CHILD), *args], capture_output=True, text=True, timeout=300, env=env,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("scenario", [("pipeline",), ("camera", "--seconds", "6")])
def test_default_pipeline_peaks_within_the_ram_budget(scenario):
    budget = load_profile("x86").budget.ram_mb
    report = _scenario(*scenario, "--backend", "auto", "--profile", "x86")
    assert 0 < report["rss_mb"] <= budget, report
    assert report["decoder_rss_mb"] > 0  # the ffmpeg child, reported beside it (not counted)
