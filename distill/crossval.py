"""Choose the audio recipe across speakers and corpora: actor-fold cross-validation and
leave-one-corpus-out, each fold a resumable run.

In:  --data DIR with ravdess_speech/ (actors 01-20) and emodb_2s/ (DESIGN.md "Shared data").
Out: under --out: `fold<k>.json` per finished fold (the held-out actors' report, EmoDB's when
     it was held out, the training history; scored in torch, mean over windows) and
     `fold<k>.pt` (the fold's student, a few hundred KB); `fold<k>.ckpt` while a fold trains
     (deleted when done); `summary.json` with the mean and standard deviation over folds; one
     log line per epoch. `--score` then exports each fold's student to an int8 bundle
     (`fold<k>-bundle/`, the --target's int8 scheme without a LiteRT payload, calibrated on two of
     its training actors) and
     scores its held-out files the way `avemo-edge eval` does (edge.evaluate: the replay loop,
     voicing gate, pooling of voiced hops): `fold<k>-runtime.json`, `summary-runtime.json`.
     Those are the figures the shipped model's manifest carries.

Folds: actors 4k+1 .. 4k+4 are fold k's test speakers (k = 0..4: two male and two female
actors each); the model trains on the other 16 for a fixed epoch count (no validation split:
nothing is chosen on the fold's actors). `--with-emodb` adds EmoDB to every fold's training
set (its boredom rows dropped), so EmoDB is then not a held-out corpus. `--fold emodb` is the
reverse leave-one-corpus-out run: train on EmoDB alone, score all 20 RAVDESS actors.
`--speaker-norm` trains the speaker-normalized student (live speaker adaptation,
edge/speaker.py) and scores it twice: causally per speaker (each held-out speaker's files in a
fixed shuffled order, file i normalized by that speaker's statistics over files 1..i; parts
"ravdess", "emodb") and without adaptation (each window's own statistics; "<part>_no_adapt").

The audio teacher is cross-validated the same way: `--ensemble A,B,C` trains nothing and scores
the ensemble of runs A, B and C's fold students (mean probabilities) on each fold's held-out
files; `--teacher A,B,C` trains each fold's student distilled (KD) from that ensemble of the
same fold's students, which never saw the fold's held-out speakers either.

Run the same command again after a stop: finished folds are skipped and the fold in progress
resumes from its checkpoint. `python -m distill.crossval --help` lists the recipe options.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from distill.distillation import Arrays, FitConfig, fit, predict
from distill.models.students import Ensemble, count_params
from distill.corpora import (AUDIO_LABELS, EMODB_LABELS, audio_arrays, concat, data_root, emodb_from_probs,
                             report_from_probs)
from distill.measure import payload_report
from distill.ship import student_bundle
from distill.students import AUDIO_CFG, build, load_student, model_arch, teacher_targets

_LOGGER = logging.getLogger(__name__)
ACTORS = [f"Actor_{i:02d}" for i in range(1, 21)]
N_FOLDS = 5
NO_ADAPT = "_no_adapt"
"""Suffix of the parts a speaker-normalized student answers without adaptation."""


def fold_actors(k: int) -> list[str]:
    return ACTORS[4 * k: 4 * k + 4]


def corpus_items(root: Path) -> dict[str, list]:
    """RAVDESS actors 01-20 and EmoDB's six shared labels, as distill.data Items."""
    from distill.data import load_corpus
    ravdess = [it for it in load_corpus(root / "ravdess_speech") if it.speaker in ACTORS]
    emodb = [it for it in load_corpus(root / "emodb_2s") if it.label in EMODB_LABELS]
    return {"ravdess": ravdess, "emodb": emodb}


def fold_data(fold: str, items: dict[str, list], with_emodb: bool, cache: Path) -> tuple[Arrays, dict[str, Arrays]]:
    """(train, held-out parts) of one fold ('0'..'4' or 'emodb')."""
    arrays = lambda its: audio_arrays(its, AUDIO_LABELS, cache)  # noqa: E731
    if fold == "emodb":
        return arrays(items["emodb"]), {"ravdess": arrays(items["ravdess"])}
    test = set(fold_actors(int(fold)))
    train = arrays([it for it in items["ravdess"] if it.speaker not in test])
    held = {"ravdess": arrays([it for it in items["ravdess"] if it.speaker in test])}
    if with_emodb:
        train = concat(train, arrays(items["emodb"]))
    else:
        held["emodb"] = arrays(items["emodb"])
    return train, held


def adapt_modes(model: torch.nn.Module) -> tuple[tuple[bool, str], ...]:
    """(adapt, report-name suffix) pairs a fold's student is scored with."""
    return ((True, ""), (False, NO_ADAPT)) if model.speaker_norm else ((True, ""),)


def part_report(name: str, probs: np.ndarray, data: Arrays) -> dict:
    """A held-out part's report: EmoDB on its 6 labels, RAVDESS on the model's 8."""
    return emodb_from_probs(probs, data) if name == "emodb" else report_from_probs(probs, data, AUDIO_LABELS)


def score(model: torch.nn.Module, held: dict[str, Arrays]) -> dict:
    """Report per held-out part; a speaker-normalized student is scored causally (its speaker's
    statistics over the files played so far) and, as `<part>_no_adapt`, on each window's own."""
    return {name + suffix: part_report(name, predict(model, data, adapt=adapt), data)
            for name, data in held.items() for adapt, suffix in adapt_modes(model)}


def fold_teacher(fold: str, teachers: list[Path]) -> str | None:
    """The fold's teacher: the ensemble of the same fold's students of earlier CV runs (each
    trained without the fold's held-out speakers), as distill.students.teacher_targets reads it."""
    return ",".join(str(d / f"fold{fold}.pt") for d in teachers) or None


def run_fold(fold: str, cfg: FitConfig, items: dict[str, list], out: Path, with_emodb: bool,
             teachers: list[Path], arch: dict) -> dict:
    """Train and score one fold (distilled from `teachers`' fold students when given); resumes
    from out/fold<k>.ckpt; writes fold<k>.json and .pt."""
    train, held = fold_data(fold, items, with_emodb, out.parent / "cache")
    teacher = fold_teacher(fold, teachers)
    train = teacher_targets(teacher, train, "audio", AUDIO_LABELS)
    torch.manual_seed(cfg.seed)
    model = build("audio", len(AUDIO_LABELS), arch)
    ckpt = out / f"fold{fold}.ckpt"
    model, history = fit(model, train, None, AUDIO_LABELS, cfg,
                         lambda m: _LOGGER.info("fold %s %s", fold, m), checkpoint=ckpt)
    result = {"fold": fold, "test_actors": fold_actors(int(fold)) if fold != "emodb" else "all 20",
              "train_size": len(train), "params": count_params(model), "config": asdict(cfg), "arch": arch,
              "with_emodb": with_emodb, "teacher": teacher, "history": history,
              "reports": score(model, held)}
    torch.save({"state_dict": model.state_dict(), "labels": AUDIO_LABELS, "arch": arch}, out / f"fold{fold}.pt")
    (out / f"fold{fold}.json").write_text(json.dumps(result, indent=1))
    ckpt.unlink(missing_ok=True)
    return result


def score_ensemble(fold: str, items: dict[str, list], out: Path, members: list[Path], with_emodb: bool) -> dict:
    """Score the ensemble of `members`' fold students on the fold's held-out files (the mean of
    their probabilities, each the mean over windows): writes fold<k>.json like a trained fold."""
    _, held = fold_data(fold, items, with_emodb, out.parent / "cache")
    model = Ensemble([load_student(d / f"fold{fold}.pt", "audio") for d in members])
    reports = {name: part_report(name, predict(model, data), data) for name, data in held.items()}
    result = {"fold": fold, "ensemble": [str(d) for d in members], "with_emodb": with_emodb, "reports": reports}
    (out / f"fold{fold}.json").write_text(json.dumps(result, indent=1))
    return result


def summarize(out: Path, suffix: str = "") -> dict:
    """Mean and standard deviation (over the actor folds) of UAR, accuracy and macro-F1 in the
    fold<k><suffix>.json files; written to summary<suffix>.json."""
    folds = [json.loads(p.read_text()) for p in sorted(out.glob(f"fold[0-9]{suffix}.json"))]
    summary: dict = {"folds": len(folds)}
    for part in ("ravdess", "emodb", "ravdess" + NO_ADAPT, "emodb" + NO_ADAPT):
        rows = [f["reports"][part] for f in folds if part in f["reports"]]
        for metric in ("uar", "accuracy", "macro_f1") if rows else ():
            values = np.array([r[metric] for r in rows])
            summary[f"{part}_{metric}"] = {"mean": float(values.mean()), "std": float(values.std()),
                                           "per_fold": values.tolist()}
    reverse = out / f"foldemodb{suffix}.json"
    if reverse.is_file():
        summary["emodb_trained_ravdess"] = json.loads(reverse.read_text())["reports"]["ravdess"]
    (out / f"summary{suffix}.json").write_text(json.dumps(summary, indent=1))
    return summary


def score_fold(fold: str, items: dict[str, list], out: Path, target: str) -> dict:
    """Export fold<k>.pt to an int8 bundle and score its held-out files with edge.evaluate."""
    from edge.evaluate import Row
    trained = json.loads((out / f"fold{fold}.json").read_text())
    held = set(fold_actors(int(fold))) if fold != "emodb" else set(ACTORS)
    calib_actors = sorted(set(ACTORS) - held)[:2]          # two of the fold's training actors
    calib_items = items["emodb"] if fold == "emodb" else [it for it in items["ravdess"] if it.speaker in calib_actors]
    calib = audio_arrays(calib_items[:: max(1, len(calib_items) // 120)], AUDIO_LABELS, out.parent / "cache")
    student = load_student(out / f"fold{fold}.pt", "audio")
    folder = student_bundle(student, "audio", AUDIO_LABELS, out / f"fold{fold}-bundle", target, calib,
                            {"trained_on": f"cross-validation fold {fold}", "teacher": "none"}, tflite=False)
    rows = {"ravdess": [Row(Path(it.audio), it.label, it.speaker) for it in items["ravdess"] if it.speaker in held]}
    if not trained["with_emodb"] and fold != "emodb":
        rows["emodb"] = [Row(Path(it.audio), it.label, it.speaker) for it in items["emodb"]]
    reports = {k + suffix: payload_report(folder, "int8.onnx", v, adapt)
               for k, v in rows.items() for adapt, suffix in adapt_modes(student)}
    result = {"fold": fold, "bundle": str(folder), "agreement": json.loads((folder / "manifest.json").read_text())[
        "agreement"], "reports": reports}
    (out / f"fold{fold}-runtime.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="distill.crossval", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="folder with ravdess_speech/ and emodb_2s/ (default ../shared/data)")
    p.add_argument("--out", default="runs/crossval")
    p.add_argument("--folds", default="0,1,2,3,4", help="comma-separated fold numbers, or 'emodb' (the reverse run)")
    p.add_argument("--with-emodb", action="store_true", help="train every fold on EmoDB too")
    p.add_argument("--epochs", type=int, default=AUDIO_CFG.epochs)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed", type=float, default=AUDIO_CFG.speed, help="random speed change +- this")
    p.add_argument("--partial", type=float, default=AUDIO_CFG.partial_p,
                   help="share of batches cut shorter than the window (as a stream's first hops)")
    p.add_argument("--speaker-norm", action="store_true",
                   help="live speaker adaptation: the student normalizes the log-mel by speaker statistics "
                        "(a second input), scored causally per speaker and without adaptation")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--score", action="store_true",
                   help="export each finished fold to int8 and score it the way avemo-edge eval does")
    p.add_argument("--target", default="rpi4", help="firmware profile whose quantization --score uses")
    p.add_argument("--teacher", default="", metavar="DIRS",
                   help="comma-separated earlier CV run folders: each fold is distilled from their fold students")
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier (teacher members)")
    p.add_argument("--hgr", type=float, default=0.0,
                   help="weight of the Soft-HGR term between the embedding and a learned label embedding")
    p.add_argument("--ensemble", default="", metavar="DIRS",
                   help="train nothing: score the ensemble of these CV runs' fold students")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teachers, members = _run_dirs(p, args.teacher, args.folds), _run_dirs(p, args.ensemble, args.folds)
    cfg = replace(AUDIO_CFG, epochs=args.epochs, seed=args.seed, speed=args.speed, partial_p=args.partial,
                  kd=bool(teachers), hgr=args.hgr)
    arch = model_arch(args.width, args.hgr, args.speaker_norm)
    items = corpus_items(data_root(args.data))
    for fold in args.folds.split(","):
        if members:
            result = score_ensemble(fold, items, out, members, args.with_emodb)
            _LOGGER.info("fold %s ensemble: %s", fold, {k: round(v["uar"], 4) for k, v in result["reports"].items()})
        elif not (out / f"fold{fold}.json").is_file():
            result = run_fold(fold, cfg, items, out, args.with_emodb, teachers, arch)
            _LOGGER.info("fold %s: %s", fold, {k: round(v["uar"], 4) for k, v in result["reports"].items()})
        if args.score and not (out / f"fold{fold}-runtime.json").is_file():
            result = score_fold(fold, items, out, args.target)
            _LOGGER.info("fold %s runtime: %s", fold, {k: round(v["uar"], 4) for k, v in result["reports"].items()})
    _LOGGER.info("summary %s", json.dumps(summarize(out)))
    if args.score:
        _LOGGER.info("runtime summary %s", json.dumps(summarize(out, "-runtime")))
    return 0


def _run_dirs(p: argparse.ArgumentParser, arg: str, folds: str) -> list[Path]:
    """The CV run folders named in `arg`; each must hold every requested fold's student."""
    dirs = [Path(d) for d in arg.split(",") if d]
    missing = [str(d / f"fold{k}.pt") for d in dirs for k in folds.split(",") if not (d / f"fold{k}.pt").is_file()]
    if missing:
        p.error(f"{', '.join(missing)}: no such fold student; finish those CV runs first")
    return dirs


if __name__ == "__main__":
    raise SystemExit(main())
