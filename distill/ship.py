"""Export: trained students -> bundles in edge/models/{audio,face}.

In:  --runs DIR from `python -m distill.train students` (`<modality>.pt`, `<modality>.json`),
     --data (the corpora the students trained on: distill/corpora.py), --target (the firmware
     profile whose quantization the bundles use) and, for the all-speaker audio model,
     --crossval DIR (`python -m distill.crossval ... --score`).
Out: under --models: `<modality>/`, a bundle (docs/bundle-format.md: float ONNX, int8 payloads
     from distill/quantize.py) whose manifest holds the input contract, the metrics
     (distill/measure.py), the int8-vs-float agreement on the validation split and the
     provenance. Logit adjustment (`adjust_for_priors`) is written into the classifier bias.

Entry point: `python -m distill.ship export --runs runs/S --models edge/models [--target x86]
[--crossval DIR]` (`export_all`); `student_bundle` exports one model (distill/crossval.py's folds).
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import tempfile
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import torch

from distill.corpora import (SHARED_PROVENANCE, calibration_sample, data_root, has_shared_corpus, model_inputs,
                             singles, split_arrays, train_label_counts)
from distill.distillation import WINDOW_S, Arrays, crop_samples, predict
from distill.export import export_onnx, with_own_stats
from distill.measure import crossval_metrics, held_out_metrics, set_metrics
from distill.models.students import EMBEDDING_DIM, fold_batchnorm, zoom_factors
from distill.quantize import load_scheme, make_bundle
from distill.students import load_student
from edge.metrics import classification_report
from edge.settings import ALIGNMENT, AUDIO, FACE

_LOGGER = logging.getLogger(__name__)
STATS_INPUT = "speaker_stats"
"""The second input of a speaker-normalized audio student: statistics [1, 2, n_mels] (edge/speaker.py)."""


def input_spec(modality: str, speaker_norm: bool = False, zoom_views: tuple[float, ...] = ()) -> dict:
    if modality == "audio":
        spec = {"name": "waveform", "shape": [1, -1], "dtype": "float32", "frontend": AUDIO.to_dict(),
                "window_s": WINDOW_S}
        return {**spec, "speaker_stats": STATS_INPUT} if speaker_norm else spec
    spec = {"name": "face", "shape": [1, 1, FACE.size, FACE.size], "dtype": "float32", "face": FACE.to_dict(),
            "mirror_average": True, "alignment": ALIGNMENT.to_dict()}
    return {**spec, "zoom_views": list(zoom_views)} if zoom_views else spec


def provenance(modality: str, result: dict, root: Path) -> dict:
    corpus = SHARED_PROVENANCE[modality] if has_shared_corpus(modality, root) else \
        f"data folder {root} (labels.csv; speaker fold 0 of 5 held out for test)"
    emodb = "trained on as a second corpus (chosen by cross-validation and leave-one-corpus-out; " \
            "EmoDB, research use)" if result.get("with_emodb") else "evaluation only (never trained, tuned or calibrated on)"
    if result.get("with_emodb"):
        corpus += " + EmoDB (German, 10 speakers, its 6 shared labels; research use)"
    return {"trained_on": corpus, "teacher": teacher_provenance(result["teacher"]), "created": date.today().isoformat(),
            "code": _git_sha(), "params": result["params"], "epochs_run": len(result["history"]),
            "init": result.get("init"), "config": result["config"], "emodb": emodb}


def teacher_provenance(teacher: str | None) -> str | dict:
    """The teacher checkpoint(s) a student was distilled from (comma-separated for an ensemble),
    each with the validation figures its training run reported (the `.json` beside its `.pt`:
    accuracy, UAR, macro-F1 per validation split, scored as training scores them, a face as one
    crop), or why there is no teacher."""
    if not teacher:
        return "none: trained from labels alone (no teacher checkpoint was available)"
    return {"checkpoint": teacher, "validation": {path: validation_figures(Path(path).with_suffix(".json"))
                                                  for path in teacher.split(",")}}


def validation_figures(report_json: Path) -> dict | str:
    if not report_json.is_file():
        return f"not recorded: {report_json} is absent"
    reports = json.loads(report_json.read_text()).get("reports", {})
    return {split: {k: r[k] for k in ("accuracy", "uar", "macro_f1")}
            for split, r in reports.items() if split.startswith("val")}


def _git_sha() -> str:
    """HEAD's commit, with "-dirty" when tracked files differ from it (the export's code is then
    not exactly that commit)."""
    proc = subprocess.run(["git", "describe", "--always", "--abbrev=40", "--dirty"],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() or "uncommitted working tree"


def export_modality(modality: str, runs: Path, root: Path, models: Path, target: str,
                    crossval: Path | None = None, zoom_views: tuple[float, ...] = ()) -> Path:
    """Student checkpoint -> float ONNX -> int8 bundle in models/<modality> with metrics: held-out
    figures, or for the all-speaker audio model the recipe's cross-validation in `crossval`.
    A face bundle may ask the runtime for `zoom_views` (edge/views.py); its metrics include them."""
    result = json.loads((runs / f"{modality}.json").read_text())
    labels = result["labels"]
    student = load_student(runs / f"{modality}.pt")
    val = split_arrays(modality, root, "val")
    held_out = not (modality == "audio" and has_shared_corpus("audio", root))
    shift = adjust_for_priors(student, val, train_label_counts(modality, root, labels), labels) if held_out \
        else {"tau": 0.0, "why": "no held-out split to choose tau on (all speakers trained on)"}
    folder = student_bundle(student, modality, labels, models / modality, target, val,
                            {**provenance(modality, result, root), "prior_shift": shift},
                            zoom_views=zoom_views if modality == "face" else ())
    metrics = held_out_metrics(folder, modality, root, labels, result["reports"]["val"]) if held_out \
        else crossval_metrics(crossval)
    set_metrics(folder, metrics)
    return folder


def student_bundle(student: torch.nn.Module, modality: str, labels: list[str], folder: Path, target: str,
                   calib: Arrays, provenance: dict, tflite: bool = True, zoom_views: tuple[float, ...] = ()) -> Path:
    """Float ONNX of `student` -> the target's bundle in `folder`, calibrated on and agreement
    checked against `calib` (metrics left empty); `tflite` False leaves out the target's
    LiteRT payload (a bundle only scored with onnxruntime)."""
    speaker = getattr(student, "speaker_norm", False)
    spec = input_spec(modality, speaker, zoom_views)
    example = torch.zeros(1, crop_samples()) if modality == "audio" else torch.zeros(1, 1, FACE.size, FACE.size)
    names = [spec["name"], STATS_INPUT] if speaker else spec["name"]
    example = (example, torch.ones(1, 2, AUDIO.n_mels)) if speaker else example
    manifest = {"name": modality, "modality": modality, "labels": labels, "input": spec,
                "embedding_dim": EMBEDDING_DIM, "metrics": {}, "provenance": provenance}
    feeds = (lambda xs: with_own_stats(xs, spec["name"], STATS_INPUT)) if speaker else (lambda xs: xs)
    xs, ys = singles(model_inputs(modality, calib), calib.y, 8)
    with tempfile.TemporaryDirectory() as tmp:
        float_path = export_onnx(fold_batchnorm(student), example, Path(tmp) / "model.onnx", names,
                                 dynamic_time_axis=modality == "audio")
        scheme = load_scheme(target)
        scheme = scheme if tflite else replace(scheme, tflite=False)
        return make_bundle(float_path, folder, scheme, feeds(calibration_sample(modality, calib)),
                           manifest, check=(feeds(xs), ys))


TAUS = (0.0, 0.25, 0.5, 0.75, 1.0)


def adjust_for_priors(model: torch.nn.Module, val: Arrays, counts: np.ndarray, labels: list[str]) -> dict:
    """Logit adjustment (Menon et al., ICLR 2021). Class-balanced training learns posteriors
    for a uniform prior; adding tau * log(prior) to the classifier bias moves them back toward
    the data's prior. tau is chosen on the validation split by macro-F1 (never on test), and
    written into the classifier bias, so the exported model carries it."""
    log_prior = torch.tensor(np.log(counts / counts.sum()), dtype=torch.float32)
    probs = torch.from_numpy(predict(model, val))
    logits = torch.log(probs.clamp_min(1e-12))

    def f1(tau: float) -> float:
        pred = (logits + tau * log_prior).argmax(1).numpy()
        return classification_report([labels[i] for i in val.y], [labels[i] for i in pred], labels)["macro_f1"]

    scores = {tau: f1(tau) for tau in TAUS}
    best = max(scores, key=scores.get)
    with torch.no_grad():
        model.head.classifier.bias += best * log_prior
    return {"tau": best, "val_macro_f1": {str(k): round(v, 4) for k, v in scores.items()},
            "train_counts": counts.astype(int).tolist()}


def export_all(runs: Path, root: Path, models: Path, target: str = "x86", crossval: Path | None = None,
               zoom_views: tuple[float, ...] = ()) -> int:
    for modality in ("audio", "face"):
        if (runs / f"{modality}.pt").is_file():
            folder = export_modality(modality, runs, root, models, target, crossval, zoom_views)
            _LOGGER.info("wrote %s", folder)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="distill.ship")
    sub = p.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export")
    ex.add_argument("--runs", default="runs/ship")
    ex.add_argument("--data", default=None)
    ex.add_argument("--models", default="edge/models")
    ex.add_argument("--target", default="x86", help="firmware profile whose quantization the bundles use")
    ex.add_argument("--crossval", type=Path, default=None,
                    help="audio: the recipe's cross-validation folder (distill.crossval --score) for the manifest")
    ex.add_argument("--zoom-views", type=zoom_factors, default=(), metavar="1.1[,1.2]",
                    help="face: the runtime also answers for the crop's centre enlarged by these factors "
                         "(input.zoom_views; two more model calls per factor); none by default")
    args = p.parse_args(argv)
    return export_all(Path(args.runs), data_root(args.data), Path(args.models), args.target, args.crossval,
                      args.zoom_views)


if __name__ == "__main__":
    raise SystemExit(main())
