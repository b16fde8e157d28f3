"""Read-first: the runtime's public contract in a few small tests."""
import subprocess
import sys

import edge
from conftest import DEMO_VIDEO, DEMO_WAV


def test_replay_a_recording(bundles):
    with edge.open(video=str(DEMO_VIDEO), audio_model=bundles["audio"], face_model=bundles["face"]) as stream:
        results = list(stream)
    assert results and all(isinstance(r, edge.Result) for r in results)
    first = results[-1]
    assert first.fused["label"] in first.fused["probs"]
    assert first.to_json().startswith('{"t":')


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
