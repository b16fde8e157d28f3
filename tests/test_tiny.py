"""Read-first: the runtime's public contract in a few small tests."""
import subprocess
import sys

import pytest

import edge
from conftest import DEMO_VIDEO, DEMO_WAV
from edge.bundle import load_bundle
from edge.fusion import fused_label_set


def test_replay_a_recording(bundles):
    with edge.open(video=str(DEMO_VIDEO), audio_model=bundles["audio"], face_model=bundles["face"]) as stream:
        results = list(stream)
    assert results and all(isinstance(r, edge.Result) for r in results)
    last = results[-1]
    probs = last.fused["probs"]
    labels = [load_bundle(bundles[m]).labels for m in ("audio", "face")]
    assert tuple(probs) == fused_label_set(*labels)  # every label either model knows, calm folded
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
    assert probs[last.fused["label"]] == max(probs.values())  # the label is the most probable one
    assert last.to_json().startswith('{"t":')


def test_hop_and_duration(bundles):
    with edge.open(audio=str(DEMO_WAV), hop=0.25, duration=1.0, audio_model=bundles["audio"]) as stream:
        assert [r.t for r in stream] == [0.25, 0.5, 0.75, 1.0]


def test_errors_are_avemo_errors():
    try:
        edge.open(audio="no-such-file.wav")
    except edge.AvemoError as err:
        assert "no-such-file.wav" in str(err)
    else:
        raise AssertionError("expected an AvemoError")


def test_runtime_imports_numpy_only():
    code = ("import sys, edge, edge.cli, edge.stream, edge.pipeline, edge.backends, edge.evaluate\n"
            "bad = [m for m in ('torch', 'onnx', 'onnxruntime', 'cv2', 'sounddevice', 'distill') if m in sys.modules]\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
