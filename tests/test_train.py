"""distill.train: epoch plans, pairing, hidden labels, the loss, and the CLI end to end
(logs, checkpoint meta, deterministic resume, DDP under torchrun, students dispatch)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("soundfile")
pytest.importorskip("cv2")

from distill import train  # noqa: E402
from distill.data import Item  # noqa: E402
from distill.data.batches import TeacherData  # noqa: E402
from distill.data.synthetic import make_synthetic_corpus  # noqa: E402
from distill.models.teacher import Teacher, TeacherConfig, load_teacher  # noqa: E402


def _data() -> TeacherData:
    """0-5 audio-visual (4, 5 unlabeled), 6-11 audio-only, 12-17 face-only (17 unlabeled)."""
    items = [Item(label=None, speaker="s", corpus="t")] * 18
    wave, face = np.zeros(4000, np.float32), np.zeros((1, 48, 48), np.uint8)
    waves = [wave if i < 12 else None for i in range(18)]
    faces = [face if i < 6 or i >= 12 else None for i in range(18)]
    y = np.array([0, 1, 0, 1, -1, -1] + [0, 1, 2] * 2 + [0, 1, 0, 1, 1, -1])
    return TeacherData(items, waves, faces, y)


def test_epoch_plan_kinds_and_determinism():
    data = _data()
    plan = train.epoch_plan(data, batch_size=4, seed=3, epoch=0, pair=False, cap=0)
    units = [u for batch in plan for u in batch]
    assert sorted(units, key=str) == sorted(train.base_units(data), key=str) and len(units) == 17
    assert (None, 17) not in units and (4, 4) in units
    for batch in plan:
        assert len({(a is None, v is None) for a, v in batch}) == 1
    assert plan == train.epoch_plan(data, 4, 3, 0, False, 0) and plan != train.epoch_plan(data, 4, 3, 1, False, 0)
    capped = train.epoch_plan(data, 4, 3, 0, False, cap=2)
    assert sum(len(b) for b in capped) == 6


def test_cross_corpus_pairs_match_labels_and_redraw():
    data = _data()
    draws = set()
    for epoch in range(6):
        units = train.epoch_plan(data, 64, 0, epoch, pair=True, cap=0)
        pairs = [u for b in units for u in b if u[0] is not None and u[1] is not None and u[0] != u[1]]
        assert all(data.y[a] == data.y[v] and 6 <= a < 12 and v >= 12 for a, v in pairs)
        assert {a for a, _ in pairs} == {6, 7, 9, 10}  # label 2 has no face: stays audio-only
        draws.add(tuple(sorted(pairs)))
    assert len(draws) > 1


def test_hide_labels():
    items = [Item(label="happy", speaker=str(i), corpus="t", audio="a.wav") for i in range(10)]
    hidden = train.hide_labels(items, 0.3, seed=1)
    assert sum(it.label is None for it in hidden) == 3 and hidden == train.hide_labels(items, 0.3, seed=1)
    assert train.hide_labels(items, 0.0, seed=1) is items


def test_batch_loss_semi_supervised_rows():
    torch.manual_seed(0)
    model = Teacher(TeacherConfig(labels=("a", "b"), embed_dim=4, audio_channels=(4,), face_channels=(4,), fusion_hidden=8))
    batch = {"wave": torch.randn(4, 3200), "faces": torch.rand(4, 1, 48, 48) * 255, "y": torch.tensor([-1, -1, -1, -1])}
    loss, parts = train.batch_loss(model, batch, hgr_weight=0.5)
    assert parts["ce"] == 0.0 and parts["hgr"] != 0.0
    loss.backward()
    assert model.audio_branch.embed.weight.grad.abs().sum() > 0
    assert model.fusion[1].weight.grad is None or model.fusion[1].weight.grad.abs().sum() == 0
    _, parts = train.batch_loss(model, {**batch, "y": torch.tensor([0, 1, 0, 1])}, hgr_weight=0.0)
    assert parts["ce"] > 0 and parts["hgr"] == 0.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_synthetic_corpus(tmp_path_factory.mktemp("synth"), n_speakers=4, per_class=2,
                                 labels=("neutral", "happy", "sad"), seconds=0.5)


def _argv(corpus, out, epochs, *extra):
    return ["teacher", "--data", str(corpus), "--out", str(out), "--epochs", str(epochs), "--folds", "4",
            "--batch-size", "8", "--window", "0.5", "--cache", str(out.parent / "cache"), *extra]


class Interrupted(Exception):
    pass


def test_cli_logs_meta_and_deterministic_resume(corpus, tmp_path, monkeypatch):
    save = train.Run.checkpoint

    def checkpoint_then_stop(run, epoch, row):
        save(run, epoch, row)
        if epoch == 1:
            raise Interrupted

    with monkeypatch.context() as m:
        m.setattr(train.Run, "checkpoint", checkpoint_then_stop)
        with pytest.raises(Interrupted):
            train.main(_argv(corpus, tmp_path / "a", 3))
    assert train.main(_argv(corpus, tmp_path / "a", 3, "--resume")) == 0
    assert train.main(_argv(corpus, tmp_path / "b", 3)) == 0
    rows = list(csv.DictReader(open(tmp_path / "a" / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and "fused_uar" in rows[0]
    assert len((tmp_path / "a" / "log.jsonl").read_text().splitlines()) == 3
    split = json.loads((tmp_path / "a" / "split.json").read_text())
    assert set(split["test"]).isdisjoint(split["val"]) and len(split["test"]) == 1
    _, meta = load_teacher(tmp_path / "a" / "teacher.pt")
    assert meta["trained_on"]["audio_visual_pairs"]["true_pairs"] == {"synthetic": 12}
    assert meta["trained_on"]["fusion_head"] == "trained" and meta["items"]["test"] == 6
    resumed = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["state_dict"]
    fresh = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["state_dict"]
    for key in fresh:
        torch.testing.assert_close(resumed[key], fresh[key])


def test_cli_errors_and_students_dispatch(corpus, tmp_path, monkeypatch, capsys):
    assert train.main(["teacher", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "corpus folder not found" in capsys.readouterr().err
    assert train.main(_argv(corpus, tmp_path / "c", 1, "--resume")) == 2
    assert train.main([]) == 2
    import distill.students
    seen = []
    monkeypatch.setattr(distill.students, "students_main", lambda argv: seen.append(argv) or 0)
    assert train.main(["students", "--x", "1"]) == 0 and seen == [["--x", "1"]]


@pytest.mark.slow
def test_torchrun_ddp_two_ranks(corpus, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "distill.train",
           *_argv(corpus, tmp_path / "ddp", 1)[:-2], "--cache", str(tmp_path / "cache")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "ddp" / "teacher.pt").is_file()
    assert len((tmp_path / "ddp" / "log.jsonl").read_text().splitlines()) == 1
