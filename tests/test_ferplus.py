"""distill/data/ferplus.py and its use in training: FER+ vote distributions as soft targets,
not-a-face images dropped, the crowd-majority report, and the face teacher (wider net with a
Soft-HGR label embedding) trained and reloaded through the students CLI."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

from distill import corpora, students  # noqa: E402
from distill.data import load_corpus  # noqa: E402
from distill.data.ferplus import VOTE_LABELS, VOTES_CSV, vote_targets  # noqa: E402
from distill.distillation import Arrays, FitConfig, student_loss  # noqa: E402

COLUMNS = list(VOTE_LABELS) + ["contempt", "unknown", "not_a_face"]


def fer_folder(root: Path, per_class: int = 30) -> Path:
    """root/fer2013/train/<label>/*.png (48 px noise faces, brighter per class) + a votes table:
    every face's crowd agrees with its folder 7 to 3 against neutral, except one face per class
    with no matched votes and, in 'angry', one the crowd calls not a face."""
    train = root / "fer2013" / "train"
    rng = np.random.default_rng(0)
    rows = []
    for c, label in enumerate(corpora.FACE_LABELS):
        (train / label).mkdir(parents=True)
        for i in range(per_class):
            name = f"{label}/Training_{c}{i:03d}.png"
            cv2.imwrite(str(train / name), rng.integers(0, 60, (48, 48), dtype=np.uint8) + 25 * c)
            votes = dict.fromkeys(COLUMNS, "0")
            column = next(k for k, v in VOTE_LABELS.items() if v == label)
            votes[column] = "7"
            votes["neutral"] = str(int(votes["neutral"]) + 3)
            if i == 0:
                votes = dict.fromkeys(COLUMNS, "")
            if label == "angry" and i == 1:
                votes = {**dict.fromkeys(COLUMNS, "0"), "not_a_face": "8", "anger": "2"}
            rows.append({"path": name, "label": label, "ferplus_file": "", "match_rms": "1.7", **votes})
    with open(train / VOTES_CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "label", "ferplus_file", "match_rms", *COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_vote_targets_are_distributions_with_fallbacks(tmp_path):
    items = load_corpus(fer_folder(tmp_path, per_class=3) / "fer2013" / "train")
    targets, not_a_face = vote_targets(items, corpora.FACE_LABELS)
    assert targets.shape == (len(items), 7) and np.allclose(targets.sum(1), 1)
    for it, t in zip(items, targets):
        k = corpora.FACE_LABELS.index(it.label)
        if it.image.endswith("0.png"):                              # unmatched: its own label, one-hot
            assert t[k] == 1.0
        elif it.label == "angry" and it.image.endswith("1.png"):    # not a face: only anger votes count
            assert t[k] == 1.0
        elif it.label != "neutral":
            assert t[k] == pytest.approx(0.7) and t[0] == pytest.approx(0.3)
    assert [Path(it.image).name for it, flag in zip(items, not_a_face) if flag] == ["Training_3001.png"]
    assert vote_targets(load_corpus(tmp_path / "fer2013" / "train")[:0], corpora.FACE_LABELS) is None


def test_soft_weight_mixes_label_and_crowd_cross_entropy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    data = Arrays(x=np.zeros((2, 1)), y=np.array([0, 1]), soft=np.array([[0.5, 0.5], [0.0, 1.0]], np.float32))
    idx, w, emb = np.arange(2), torch.ones(2), torch.zeros(2, 32)
    hard = student_loss(logits, emb, torch.tensor([0, 1]), data, idx, w, FitConfig(label_smoothing=0.0))
    crowd = -(torch.from_numpy(data.soft) * torch.log_softmax(logits, 1)).sum(1).mean()
    mixed = student_loss(logits, emb, torch.tensor([0, 1]), data, idx, w, FitConfig(label_smoothing=0.0, soft=0.7))
    assert float(mixed) == pytest.approx(0.3 * float(hard) + 0.7 * float(crowd), rel=1e-6)


def test_face_teacher_trains_with_votes_and_hgr_and_reloads(tmp_path):
    root = fer_folder(tmp_path / "data")
    out = tmp_path / "teacher"
    argv = ["--data", str(root), "--out", str(out), "--modality", "face", "--epochs", "1", "--no-kd",
            "--width", "0.5", "--hgr", "0.1", "--soft", "0.5"]
    assert students.students_main(argv) == 0
    result = json.loads((out / "face.json").read_text())
    assert result["arch"] == {"width": 0.5, "hgr": True} and result["config"]["soft"] == 0.5
    assert {"val", "test", "val_ferplus_majority", "test_ferplus_majority"} <= set(result["reports"])
    model = students.load_student(out / "face.pt")
    assert model.label_embedding is not None
    assert model.body[0][0].out_channels == 16                     # stem 32 at width 0.5
    assert not (out / "face.ckpt").exists()                        # the finished run leaves no training state
    splits, _ = corpora.load_splits("face", root, tmp_path / "cache")
    assert corpora.without_non_faces(splits["train"]).meta["not_a_face"].sum() == 0


def test_majority_rows_are_the_majority_arrays_as_eval_rows(tmp_path):
    from edge.evaluate import Row
    root = fer_folder(tmp_path / "data", per_class=6)
    rows = corpora.crowd_majority_rows(root, "test")
    majority = corpora.crowd_majority(corpora.split_arrays("face", root, "test"))
    assert [r.label for r in rows] == [corpora.FACE_LABELS[y] for y in majority.y] and rows
    assert all(isinstance(r, Row) for r in rows)
    assert corpora.crowd_majority_rows(tmp_path / "nothing", "test") is None
