"""The student stage before export (distill.students, distill.corpora, distill.measure): the
students CLI on a synthetic corpus, labels alone and distilled from an ensemble of student
checkpoints, and their ensemble scored (`--score`); the shared-corpus dispatch and per-target
re-measuring off the shared corpora."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("soundfile")

from distill import corpora, measure, students  # noqa: E402
from distill.data.synthetic import make_synthetic_corpus  # noqa: E402
from distill.distillation import predict  # noqa: E402
from edge.errors import AvemoError  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_synthetic_corpus(tmp_path_factory.mktemp("synth"), n_speakers=5, per_class=2,
                                 labels=("neutral", "happy", "sad"), seconds=0.6)


def _students(corpus: Path, out: Path, *extra: str) -> dict:
    argv = ["--data", str(corpus), "--out", str(out), "--modality", "audio", "--epochs", "1", *extra]
    assert students.students_main(argv) == 0
    return json.loads((out / "audio.json").read_text())


def test_labels_alone_then_distilled_from_an_ensemble(corpus, tmp_path):
    members = [tmp_path / f"m{s}" for s in (1, 2)]
    for seed, out in enumerate(members, start=1):
        assert _students(corpus, out, "--no-kd", "--seed", str(seed))["teacher"] is None
    teacher = ",".join(str(m / "audio.pt") for m in members)
    result = _students(corpus, tmp_path / "kd", "--teacher", teacher)
    assert result["teacher"] == teacher
    assert set(result["reports"]) == {"val", "test"} and 0 <= result["reports"]["test"]["uar"] <= 1
    scored = _students(corpus, tmp_path / "scored", "--score", teacher)
    assert scored["ensemble"] == teacher.split(",") and "history" not in scored
    test = corpora.load_splits("audio", corpus, tmp_path / "cache")[0]["test"]
    probs = np.mean([predict(students.load_student(m / "audio.pt"), test) for m in members], axis=0)
    assert scored["reports"]["test"]["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == test.y), abs=1e-4)


def test_ensemble_teacher_targets_are_the_log_mean_probabilities(corpus, tmp_path):
    splits, labels = corpora.load_splits("audio", corpus, tmp_path / "cache")
    paths = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        path = tmp_path / f"t{seed}" / "audio.pt"
        path.parent.mkdir()
        torch.save({"state_dict": students.build("audio", len(labels)).state_dict(), "labels": labels}, path)
        paths.append(path)
    data = students.teacher_targets(",".join(map(str, paths)), splits["val"], "audio", labels)
    expected = np.mean([predict(students.load_student(p), splits["val"]) for p in paths], axis=0)
    assert data.teacher_emb is None
    np.testing.assert_allclose(np.exp(data.teacher_logits), expected, rtol=1e-4, atol=1e-6)


def test_shared_corpora_absent(tmp_path):
    assert corpora.shared_corpus_items("audio", tmp_path) is None
    assert corpora.shared_corpus_items("face", tmp_path) is None
    assert corpora.train_label_counts("face", tmp_path, ["a", "b"]).tolist() == [1.0, 1.0]


def test_remeasure_needs_the_shared_corpora(tmp_path):
    from tiny_models import make_face_bundle
    folder = make_face_bundle(tmp_path / "face")
    before = (folder / "manifest.json").read_text()
    assert measure.remeasure(folder, tmp_path / "no-corpora") is False
    assert (folder / "manifest.json").read_text() == before


def test_single_teacher_gives_its_embedding_and_faces_are_mirrored(tmp_path):
    from dataclasses import replace
    from distill.distillation import Arrays, predict_with_embedding
    labels = ["neutral", "happy", "sad"]
    torch.manual_seed(5)
    path = tmp_path / "face.pt"
    torch.save({"state_dict": students.build("face", 3).state_dict(), "labels": labels}, path)
    rng = np.random.default_rng(0)
    data = Arrays(x=rng.uniform(0, 255, (6, 1, 48, 48)).astype(np.float32), y=np.array([0, 1, 2] * 2))
    out = students.teacher_targets(str(path), data, "face", labels)
    model = students.load_student(path)
    views = [predict_with_embedding(model, d) for d in (data, replace(data, x=data.x[..., ::-1].copy()))]
    np.testing.assert_allclose(np.exp(out.teacher_logits), (views[0][0] + views[1][0]) / 2, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.teacher_emb, (views[0][1] + views[1][1]) / 2, rtol=1e-4, atol=1e-5)
    with pytest.raises(AvemoError, match="labels differ"):
        students.teacher_targets(str(path), data, "face", ["neutral", "sad", "happy"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible: --device cuda would train")
def test_device_cuda_without_a_gpu_is_one_clear_error(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        students.students_main(["--data", str(corpus), "--out", str(tmp_path), "--modality", "face", "--device", "cuda"])
    assert exit_.value.code == 2 and "no CUDA device visible" in capsys.readouterr().err
