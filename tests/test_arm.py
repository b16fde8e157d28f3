"""aarch64 under qemu agrees with x86-64: tools/arm_compare.py (diff rules) and tools/arm_check.sh.

The end-to-end check builds (once, cached in $AVEMO_ARM_CACHE, ~40 s with a mirror at hand)
a Debian bookworm arm64 root, takes the aarch64 wheels, and runs the runtime under
qemu-aarch64-static (~30 s warm). It skips when qemu-user-static / debootstrap are not
installed (`make arm-check` installs them). Timings under emulation mean nothing: none is
measured or asserted.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import platform
import shutil
import subprocess
import wave

import pytest

from conftest import REPO

_spec = importlib.util.spec_from_file_location("arm_compare", REPO / "tools" / "arm_compare.py")
arm_compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(arm_compare)


def _measure(probs: list[float], hop_probs: dict[str, float]) -> dict:
    labels = ["neutral", "happy", "sad"]
    backend = {
        "eval": {m: {"n": 1, "labels": labels, "confusion": [[1, 0, 0], [0, 0, 0], [0, 0, 0]], "accuracy": 1.0,
                     "uar": 1.0, "macro_f1": 1.0, "label_mapping": {"mapped": {}, "left_out": {}}}
                 for m in ("audio", "face")},
        "items": {m: [{"path": "00_neutral.wav", "probs": list(probs)}] for m in ("audio", "face")},
        "run": [{"t": 0.5, "audio": {"voiced": True, "label": max(hop_probs, key=hop_probs.get), "probs": dict(hop_probs)},
                 "face": None, "fused": {"label": max(hop_probs, key=hop_probs.get), "probs": dict(hop_probs)},
                 "counters": {}, "events": []}],
    }
    return {"machine": "x86_64", "python": "3.11", "numpy": "2", "bundles": {"audio": {"name": "a", "files": {}}},
            "backends": {"numpy": backend}}


REF = _measure([0.7, 0.2, 0.1], {"neutral": 0.6, "happy": 0.3, "sad": 0.1})


def test_identical_results_agree():
    report = arm_compare.diff(REF, copy.deepcopy(REF))
    assert report["ok"] and not report["problems"] and not report["ties"]
    assert report["probability_vectors_compared"] == 4 and report["max_probability_gap"] == 0.0


def test_small_probability_gap_is_within_tolerance_and_reported():
    other = _measure([0.705, 0.195, 0.1], {"neutral": 0.61, "happy": 0.29, "sad": 0.1})
    report = arm_compare.diff(REF, other, atol=0.02)
    assert report["ok"] and report["max_probability_gap"] == pytest.approx(0.01)


def test_gap_beyond_tolerance_fails():
    other = _measure([0.65, 0.25, 0.1], {"neutral": 0.6, "happy": 0.3, "sad": 0.1})
    report = arm_compare.diff(REF, other, atol=0.02)
    assert not report["ok"] and any("differ by 0.05" in p for p in report["problems"])


def test_flipped_label_fails_unless_x86_had_a_tie():
    ref = _measure([0.50, 0.47, 0.03], {"neutral": 0.6, "happy": 0.3, "sad": 0.1})
    flipped = _measure([0.485, 0.487, 0.028], {"neutral": 0.6, "happy": 0.3, "sad": 0.1})
    report = arm_compare.diff(ref, flipped, atol=0.02)  # every gap <= 0.017, but x86's margin was 0.03
    assert not report["ok"] and len([p for p in report["problems"] if "label" in p]) == 2
    tie_ref = _measure([0.451, 0.449, 0.1], {"neutral": 0.6, "happy": 0.3, "sad": 0.1})
    tie_arm = _measure([0.449, 0.451, 0.1], {"neutral": 0.6, "happy": 0.3, "sad": 0.1})
    report = arm_compare.diff(tie_ref, tie_arm, atol=0.02)
    assert report["ok"] and len(report["ties"]) == 2  # the audio and the face item


def test_structural_differences_fail():
    other = copy.deepcopy(REF)
    other["backends"]["numpy"]["eval"]["face"]["confusion"] = [[0, 1, 0], [0, 0, 0], [0, 0, 0]]
    other["backends"]["numpy"]["run"][0]["audio"]["voiced"] = False
    other["bundles"]["audio"]["files"] = {"model.npz": "other"}
    problems = arm_compare.diff(REF, other)["problems"]
    assert any("face/confusion" in p for p in problems) and any("voiced" in p for p in problems)
    assert any(p.startswith("bundles") for p in problems)
    fewer = copy.deepcopy(REF)
    fewer["backends"]["numpy"]["run"] = []
    missing = copy.deepcopy(REF)
    del missing["backends"]["numpy"]
    assert not arm_compare.diff(REF, fewer)["ok"] and not arm_compare.diff(REF, missing)["ok"]


def test_fixed_inputs_are_lossless_files_with_labels(tmp_path):
    pytest.importorskip("cv2")
    out = arm_compare.make_inputs(tmp_path / "inputs")
    for modality, suffix in (("audio", ".wav"), ("face", ".png")):
        rows = (out / modality / "labels.csv").read_text().split()[1:]
        assert rows and all((out / modality / r.split(",")[0]).is_file() and r.split(",")[0].endswith(suffix)
                            for r in rows)
    with wave.open(str(next((out / "audio").glob("*.wav")))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2) and w.getnframes() > 16000
    assert (out / "speech.wav").read_bytes() == (REPO / "edge" / "assets" / "demo.wav").read_bytes()


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64", reason="compares aarch64 under qemu with an x86-64 host")
def test_aarch64_under_qemu_agrees_with_x86(bundles, tmp_path):
    missing = [t for t in ("qemu-aarch64-static", "debootstrap") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: apt-get install qemu-user-static debootstrap "
                    "(or run `make arm-check`, which installs them)")
    proc = subprocess.run([str(REPO / "tools" / "arm_check.sh"), "--audio-model", bundles["audio"],
                           "--face-model", bundles["face"]], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"arm_check.sh exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout)
    assert report["ok"] and report["machines"] == ["x86_64", "aarch64"]
    assert set(report["backends"]) >= {"numpy", "onnxruntime"}
    assert report["probability_vectors_compared"] >= 2 * 11  # two backends x (>= 4 audio + 7 face items)
