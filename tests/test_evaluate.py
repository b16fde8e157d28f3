"""distill.evaluate: teacher checkpoints and bundles scored on data folders, with splits,
label mapping, per-speaker breakdown, JSON and confusion PNGs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("soundfile")
pytest.importorskip("cv2")

from distill import evaluate, train  # noqa: E402
from distill.data import load_corpus  # noqa: E402
from distill.data.batches import prepare  # noqa: E402
from distill.data.synthetic import make_synthetic_corpus  # noqa: E402
from distill.models.teacher import load_teacher  # noqa: E402

LABELS = ("neutral", "happy", "sad")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    corpus = make_synthetic_corpus(root / "synth", n_speakers=4, per_class=2, labels=LABELS, seconds=0.5)
    out = root / "run"
    assert train.main(["teacher", "--data", str(corpus), "--out", str(out), "--epochs", "1", "--folds", "4",
                       "--window", "0.5", "--cache", str(root / "cache")]) == 0
    return corpus, out


def test_teacher_report_on_held_out_speakers(run, tmp_path):
    corpus, out = run
    rc = evaluate.main(["--model", str(out / "teacher.pt"), "--data", str(corpus), "--split", str(out / "split.json"),
                        "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "cm.png"), "--cache", str(tmp_path)])
    assert rc == 0
    result = json.loads((tmp_path / "r.json").read_text())
    test_speakers = json.loads((out / "split.json").read_text())["test"]
    assert set(result["reports"]) == {"audio", "face", "fused"}
    for modality, report in result["reports"].items():
        assert report["n"] == 6 and 0 <= report["uar"] <= 1 and set(report["per_class"]) <= set(LABELS)
        assert sorted(report["per_speaker"]) == test_speakers
        assert (tmp_path / f"cm.{modality}.png").stat().st_size > 1000
    fold1 = evaluate.evaluate(out / "teacher.pt", corpus, split=str(out / "split.json"), fold=1, cache_dir=None)
    assert sorted(fold1["reports"]["audio"]["per_speaker"]) == json.loads((out / "split.json").read_text())["fold_1"]


def test_predictions_follow_the_modalities(run):
    corpus, out = run
    model, _ = load_teacher(out / "teacher.pt")
    items = load_corpus(corpus)[:4]
    audio_only = [type(it)(it.label, it.speaker, it.corpus, audio=it.audio) for it in items[:2]]
    data = prepare(audio_only + items[2:], model.labels, 1, 48, None)
    preds = evaluate.teacher_predictions(model, data)
    assert preds["face"][:2] == [None, None] and preds["fused"][:2] == [None, None]
    assert all(p is not None for p in preds["audio"]) and all(p is not None for p in preds["fused"][2:])


def test_unknown_labels_are_mapped_and_reported(run, tmp_path):
    corpus, out = run
    rows = [f"{corpus}/{it.audio.split('/synth/')[-1]},{'calm' if it.label == 'neutral' else it.label},x{it.speaker}"
            for it in load_corpus(corpus)[:12]]
    (tmp_path / "labels.csv").write_text("path,label,speaker\n" + "\n".join(rows) + "\n")
    result = evaluate.evaluate(out / "teacher.pt", tmp_path, cache_dir=None)
    assert set(result["reports"]) == {"audio"}
    assert result["reports"]["audio"]["label_mapping"]["mapped"] == {"calm": "neutral"}


def test_errors_exit_2(run, tmp_path, capsys):
    corpus, out = run
    assert evaluate.main(["--model", str(tmp_path / "none.pt"), "--data", str(corpus)]) == 2
    assert "none.pt" in capsys.readouterr().err
    assert evaluate.main(["--model", str(out / "teacher.pt"), "--data", str(corpus), "--split",
                          str(out / "split.json"), "--fold", "9"]) == 2
    assert "fold_9" in capsys.readouterr().err


def test_bundles(bundles, run, tmp_path):
    corpus, _ = run
    for modality, key in (("audio", "audio"), ("face", "face")):
        result = evaluate.evaluate(bundles[key], corpus, cache_dir=None)
        assert list(result["reports"]) == [modality] and result["reports"][modality]["n"] == 24
    # one scorer: an audio bundle's answers here are `avemo-edge eval`'s (edge.evaluate) on the same files
    from edge.bundle import load_bundle
    from edge.evaluate import Row, evaluate_rows, scorer
    from edge.profiles import load_profile
    items = [it for it in load_corpus(corpus) if it.audio and it.label]
    rows = [Row(Path(it.audio), it.label, it.speaker) for it in items]
    labels = load_bundle(bundles["audio"]).labels
    edge_report = evaluate_rows(scorer(bundles["audio"], "audio", load_profile("x86")), labels, rows)
    ours = evaluate.evaluate(bundles["audio"], corpus, cache_dir=None)["reports"]["audio"]
    assert ours["confusion"] == edge_report["confusion"] and ours["labels"] == edge_report["labels"]

