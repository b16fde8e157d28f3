"""distill/crossval.py: actor folds, EmoDB as a held-out or a second training corpus, the
summary over folds, resuming (finished folds skipped) and --score through edge's eval."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from distill import crossval  # noqa: E402
from media import write_wav  # noqa: E402

EMOTIONS = {"01": "neutral", "03": "happy", "04": "sad", "05": "angry"}


def tone(freq: float, seconds: float = 0.8, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    noise = 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)) + noise).astype(np.float32)


def corpora(root: Path) -> Path:
    """A 20-actor RAVDESS-layout folder and an EmoDB-like labels.csv folder; each emotion a pitch."""
    for a in range(1, 21):
        (root / "ravdess_speech" / f"Actor_{a:02d}").mkdir(parents=True)
        for code, (label, freq) in zip(EMOTIONS, zip(EMOTIONS.values(), (150, 220, 110, 300))):
            write_wav(root / "ravdess_speech" / f"Actor_{a:02d}" / f"03-01-{code}-01-01-01-{a:02d}.wav",
                      tone(freq, seed=a), 16000)
    rows = ["path,label,speaker"]
    (root / "emodb_2s").mkdir()
    for i, (label, freq) in enumerate(zip(("neutral", "happy", "sad", "angry", "boredom"), (150, 220, 110, 300, 180))):
        write_wav(root / "emodb_2s" / f"e{i}.wav", tone(freq, seed=100 + i), 16000)
        rows.append(f"e{i}.wav,{label},s{i % 2}")
    (root / "emodb_2s" / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_folds_hold_out_four_actors_each():
    held = [crossval.fold_actors(k) for k in range(crossval.N_FOLDS)]
    assert [len(h) for h in held] == [4] * 5 and sorted(sum(held, [])) == crossval.ACTORS


def test_fold_data_keeps_emodb_out_or_trains_on_it(tmp_path):
    items = crossval.corpus_items(corpora(tmp_path))
    assert len(items["ravdess"]) == 80 and len(items["emodb"]) == 4          # boredom left out
    train, held = crossval.fold_data("1", items, with_emodb=False, cache=tmp_path / "cache")
    assert len(train) == 64 and set(held) == {"ravdess", "emodb"} and len(held["ravdess"]) == 16
    assert held["ravdess"].meta["speakers"] == ["Actor_05", "Actor_06", "Actor_07", "Actor_08"]
    train, held = crossval.fold_data("1", items, with_emodb=True, cache=tmp_path / "cache")
    assert len(train) == 68 and set(held) == {"ravdess"}
    train, held = crossval.fold_data("emodb", items, with_emodb=False, cache=tmp_path / "cache")
    assert len(train) == 4 and len(held["ravdess"]) == 80


def test_summary_is_mean_and_spread_over_folds(tmp_path):
    for k, uar in enumerate((0.5, 0.7)):
        report = {"uar": uar, "accuracy": uar + 0.1, "macro_f1": uar - 0.1}
        (tmp_path / f"fold{k}.json").write_text(json.dumps({"reports": {"ravdess": report}}))
    summary = crossval.summarize(tmp_path)
    assert summary["folds"] == 2 and summary["ravdess_uar"]["mean"] == pytest.approx(0.6)
    assert summary["ravdess_uar"]["std"] == pytest.approx(0.1) and "emodb_uar" not in summary
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


@pytest.mark.slow
def test_one_fold_trains_scores_through_eval_and_is_skipped_when_done(tmp_path):
    root = corpora(tmp_path / "data")
    out = tmp_path / "cv"
    argv = ["--data", str(root), "--out", str(out), "--folds", "0", "--epochs", "1", "--score", "--target", "x86"]
    assert crossval.main(argv) == 0
    fold = json.loads((out / "fold0.json").read_text())
    scored = json.loads((out / "fold0-runtime.json").read_text())
    assert fold["test_actors"] == crossval.fold_actors(0) and not (out / "fold0.ckpt").exists()
    assert scored["reports"]["ravdess"]["n"] == 16 and scored["reports"]["emodb"]["n"] == 4
    assert (out / "fold0-bundle" / "manifest.json").is_file()
    summary = json.loads((out / "summary-runtime.json").read_text())
    assert summary["ravdess_uar"]["per_fold"] == [scored["reports"]["ravdess"]["uar"]]
    stamp = (out / "fold0.json").stat().st_mtime_ns
    assert crossval.main(argv) == 0                                           # done: nothing retrained
    assert (out / "fold0.json").stat().st_mtime_ns == stamp


def test_ensemble_scores_mean_probabilities_and_teacher_distills_each_fold(tmp_path):
    root = corpora(tmp_path / "data")
    runs = [tmp_path / f"s{s}" for s in (1, 2)]
    for seed, out in zip((1, 2), runs):
        argv = ["--data", str(root), "--out", str(out), "--folds", "2", "--epochs", "1", "--seed", str(seed)]
        assert crossval.main(argv) == 0
    dirs = ",".join(map(str, runs))
    assert crossval.main(["--data", str(root), "--out", str(tmp_path / "ens"), "--folds", "2", "--ensemble", dirs]) == 0
    items = crossval.corpus_items(root)
    _, held = crossval.fold_data("2", items, False, tmp_path / "cache")
    probs = np.mean([crossval.predict(crossval.load_student(d / "fold2.pt", "audio"), held["ravdess"]) for d in runs], 0)
    expected = crossval.report_from_probs(probs, held["ravdess"], crossval.AUDIO_LABELS)
    ensemble = json.loads((tmp_path / "ens" / "fold2.json").read_text())
    assert ensemble["reports"]["ravdess"] == json.loads(json.dumps(expected))
    assert crossval.main(["--data", str(root), "--out", str(tmp_path / "kd"), "--folds", "2", "--epochs", "1",
                          "--teacher", dirs]) == 0
    distilled = json.loads((tmp_path / "kd" / "fold2.json").read_text())
    assert distilled["config"]["kd"] and distilled["teacher"] == ",".join(str(d / "fold2.pt") for d in runs)


def test_missing_fold_student_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        crossval.main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--folds", "3", "--teacher", str(tmp_path)])
    assert exit_.value.code == 2 and "fold3.pt: no such fold student" in capsys.readouterr().err


def test_a_wide_hgr_member_is_saved_with_its_shape(tmp_path):
    root = corpora(tmp_path / "data")
    argv = ["--data", str(root), "--out", str(tmp_path / "w"), "--folds", "4", "--epochs", "1",
            "--width", "1.5", "--hgr", "0.1"]
    assert crossval.main(argv) == 0
    fold = json.loads((tmp_path / "w" / "fold4.json").read_text())
    assert fold["arch"] == {"width": 1.5, "hgr": True} and fold["config"]["hgr"] == 0.1
    assert crossval.load_student(tmp_path / "w" / "fold4.pt", "audio").label_embedding is not None


@pytest.mark.slow
def test_speaker_norm_fold_is_scored_causally_and_without_adaptation(tmp_path):
    root = corpora(tmp_path / "data")
    out = tmp_path / "cv"
    argv = ["--data", str(root), "--out", str(out), "--folds", "0", "--epochs", "1", "--score", "--target", "x86",
            "--speaker-norm"]
    assert crossval.main(argv) == 0
    fold = json.loads((out / "fold0.json").read_text())
    scored = json.loads((out / "fold0-runtime.json").read_text())
    assert fold["arch"] == {"speaker_norm": True}
    for reports in (fold["reports"], scored["reports"]):
        assert set(reports) == {"ravdess", "emodb", "ravdess_no_adapt", "emodb_no_adapt"}
    manifest = json.loads((out / "fold0-bundle" / "manifest.json").read_text())
    assert manifest["input"]["speaker_stats"] == "speaker_stats"
    summary = json.loads((out / "summary-runtime.json").read_text())
    assert summary["ravdess_no_adapt_uar"]["per_fold"] == [scored["reports"]["ravdess_no_adapt"]["uar"]]
