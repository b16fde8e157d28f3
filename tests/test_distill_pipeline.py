"""`make distill` with no DATA: the whole chain on the synthetic corpus, then the runtime on its bundles."""
import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")

from conftest import DEMO_VIDEO  # noqa: E402
from edge.bundle import load_bundle  # noqa: E402

pytestmark = pytest.mark.slow


def test_synthetic_chain_end_to_end(tmp_path):
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "distill.pipeline", "--out", str(out), "--epochs", "1",
                        "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    teacher = out / "face-teacher" / "face.pt"
    assert json.loads((out / "face-teacher" / "face.json").read_text())["arch"] == {"width": 1.5, "hgr": True}
    assert json.loads((out / "students" / "face.json").read_text())["teacher"] == str(teacher)
    qat = json.loads((out / "face-qat" / "face.json").read_text())  # what ships: the student fine-tuned with QAT
    assert qat["teacher"] == str(teacher) and qat["init"] == str(out / "students" / "face.pt")
    assert qat["config"]["qat"] == 1.0
    assert json.loads((out / "students" / "audio.json").read_text())["teacher"] is None
    for modality in ("audio", "face"):
        bundle = load_bundle(out / "models" / modality)
        assert bundle.modality == modality
        metrics = bundle.manifest["metrics"]
        test = metrics["test_int8"]  # the headline: the int8 payload on never-seen speakers
        confusion = np.array(test["confusion"])
        support = confusion.sum(axis=1)
        assert test["n"] == confusion.sum() > 0 and set(bundle.labels) <= set(test["labels"])
        recall = np.diag(confusion)[support > 0] / support[support > 0]
        assert metrics["uar"] == test["uar"] == pytest.approx(recall.mean())
        assert "synthetic" in bundle.manifest["provenance"]["trained_on"]
        assert load_bundle(out / "quantized-x86" / modality).manifest["quantization"]["reduce_range"]
    teacher_val = json.loads((out / "face-teacher" / "face.json").read_text())["reports"]["val"]
    provenance = load_bundle(out / "models" / "face").manifest["provenance"]["teacher"]
    assert provenance["checkpoint"] == str(teacher)
    assert provenance["validation"][str(teacher)]["val"]["uar"] == teacher_val["uar"]
    assert load_bundle(out / "models" / "audio").manifest["provenance"]["teacher"].startswith("none")
    run = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--video", str(DEMO_VIDEO), "--duration", "2",
                          "--audio-model", str(out / "models" / "audio"), "--face-model", str(out / "models" / "face")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert len([json.loads(line) for line in run.stdout.splitlines()]) == 4
