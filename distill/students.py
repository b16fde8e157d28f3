"""The students: their recipes, teacher targets and training, and the students CLI.

In:  a data root or corpus folder (distill/corpora.py splits it), optionally a teacher
     (`--teacher`: a Teacher checkpoint, or student-format checkpoints, comma-separated for an
     ensemble) and a starting student (`--init`).
Out: under --out: `<modality>.pt` (student state dict, labels, arch) and `<modality>.json`
     (config, history, held-out reports); `<modality>.ckpt` while it trains (resumable).

Entry point: `students_main`, which is `python -m distill.train students --data D --out runs/S
[--modality audio|face|both] ...`; `train` trains one modality (the loss and the loop are
distill/distillation.py's `fit`); `--score A.pt,B.pt` trains nothing and scores those students
as one `Ensemble` (a teacher made of students; one path: a student as the device answers it).
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from distill.corpora import concat, crowd_majority, data_root, emodb_from_probs, load_splits, without_non_faces
from distill.distillation import Arrays, FitConfig, evaluate, fit, predict, predict_with_embedding
from distill.models.students import AudioStudent, Ensemble, FaceStudent, count_params, zoom_factors
from edge.errors import AvemoError

_LOGGER = logging.getLogger(__name__)
AUDIO_WITH_EMODB = True
"""The shipped audio recipe trains on EmoDB as a second corpus (chosen by cross-validation and
leave-one-corpus-out, docs/students.md)."""
AUDIO_CFG = FitConfig(epochs=60, batch=32, lr=3e-3, label_smoothing=0.1, partial_p=0.5)
FACE_CFG = FitConfig(epochs=14, batch=128, lr=4e-3, weight_decay=1e-3, balance=0.5)
FACE_TEACHER_ARGS = ("--width", "1.5", "--hgr", "0.1", "--soft", "0.5", "--no-kd", "--epochs", "120")
"""The face teacher's recipe (`students --modality face` options; docs/students.md "Face
teacher, 120 epochs"): the student net at width 1.5, half FER+ votes, Soft-HGR against the label
embedding, 120 epochs (40 left it below the shipped student on the original labels)."""
FACE_STUDENT_ARGS = ("--soft", "0.5", "--epochs", "120")
"""The face student's recipe, with `--teacher` the face teacher (docs/students.md "The face
student that ships"): KD + common-space regression, half FER+ votes, as long as the teacher
trained (at 40 epochs the distilled students did not beat labels alone)."""
FACE_QAT_ARGS = ("--soft", "0.5", "--epochs", "5", "--lr", "3e-4", "--qat", "1")
"""Then quantization-aware fine-tuning from it (`--init`, same teacher): on validation as the
device answers (int8, crop + mirror) it was above the student without it on every figure and
lifted int8 agreement to 99.02 %."""


def teacher_targets(teacher_path: str | None, data: Arrays, modality: str, labels: list[str]) -> Arrays:
    """Attach the teacher's logits (columns reordered to `labels`; a label the teacher lacks
    gets -30) and common-space embedding to every item, if a teacher is given. A teacher saved
    by `train` (`.../face.pt`, e.g. the wide Soft-HGR face teacher) answers like `member_targets`;
    a comma-separated list of them is an ensemble teacher."""
    if not teacher_path:
        return data
    saved = [torch.load(p, map_location="cpu", weights_only=False) for p in teacher_path.split(",")]
    if all("format" not in ckpt for ckpt in saved):              # saved by `train`, not a Teacher
        logits, emb = member_targets(students_of(teacher_path, saved, modality, labels), data)
        return replace(data, teacher_logits=logits, teacher_emb=emb)
    from distill.models.teacher import load_teacher
    teacher, _ = load_teacher(teacher_path)
    with torch.no_grad():
        if modality == "audio":
            out = [teacher.audio_logits_and_embedding(torch.from_numpy(w[:n][None]))
                   for w, n in zip(data.x, data.lengths)]
        else:
            out = [teacher.face_logits_and_embedding(torch.from_numpy(data.x[i:i + 256, 0]))
                   for i in range(0, len(data), 256)]
    t_logits = torch.cat([o[0] for o in out]).numpy()
    logits = np.full((len(data), len(labels)), -30.0, np.float32)
    for j, label in enumerate(labels):
        if label in teacher.labels:
            logits[:, j] = t_logits[:, teacher.labels.index(label)]
    emb = torch.cat([o[1] for o in out]).numpy().astype(np.float32)
    return replace(data, teacher_logits=logits, teacher_emb=emb)


def students_of(paths: str, saved: list[dict], modality: str, labels: list[str]) -> list[torch.nn.Module]:
    """The students `train` saved at the comma-separated `paths` (their loaded `saved` dicts),
    refused in one line where one's labels differ from `labels`."""
    for p, ckpt in zip(paths.split(","), saved):
        if ckpt["labels"] != labels:
            raise AvemoError(f"teacher {p}: its labels differ from the student's {labels}; "
                             "train the teacher on the same corpus")
    return [student_from(ckpt, modality) for ckpt in saved]


def score_ensemble(modality: str, root: Path, out: Path, paths: str, zooms: tuple[float, ...] = ()) -> dict:
    """Score the `Ensemble` of the students at `paths` (comma-separated; faces mirrored too, as
    the runtime's mirror averaging, and with `zooms` the zoom views of edge/views.py) on the held-out splits, as
    `train` reports a student; writes `<modality>.json` in `out`. One path scores one student
    the way the device answers it; several, an ensemble teacher."""
    out.mkdir(parents=True, exist_ok=True)
    splits, labels = load_splits(modality, root, out.parent / "cache")
    saved = [torch.load(p, map_location="cpu", weights_only=True) for p in paths.split(",")]
    face = modality == "face"
    model = Ensemble(students_of(paths, saved, modality, labels), mirror=face, zooms=zooms if face else ())
    result = {"modality": modality, "labels": labels, "ensemble": paths.split(","), "zoom_views": list(model.zooms),
              "params": count_params(model),
              "reports": held_out_reports(model, splits, labels)}
    (out / f"{modality}.json").write_text(json.dumps(result, indent=1))
    return result


def member_targets(members: list[torch.nn.Module], data: Arrays) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits, embedding) a student-format teacher gives each item: its `Ensemble`'s, faces
    with flip test-time augmentation (+1.4 points FER+ majority accuracy for the first face
    teacher on validation); the embedding for a single member only (None for several)."""
    probs, emb = predict_with_embedding(Ensemble(members, mirror=data.modality == "face"), data)
    return np.log(np.clip(probs, 1e-6, None)).astype(np.float32), emb.astype(np.float32) if emb.shape[1] else None


def build(modality: str, n_labels: int, arch: dict | None = None) -> torch.nn.Module:
    """A student (or, with `arch` such as {"width": 1.5, "hgr": True}, a teacher of the same shape)."""
    return AudioStudent(n_labels, **(arch or {})) if modality == "audio" else FaceStudent(n_labels, **(arch or {}))


def held_out_reports(model: torch.nn.Module, splits: dict[str, Arrays], labels: list[str]) -> dict:
    """Validation and test reports where those splits are held out (not for an all-speaker
    audio model), and EmoDB's when it was not trained on."""
    reports = {k: evaluate(model, splits[k], labels) for k in ("val", "test") if "test" in splits}
    for k in ("val", "test"):
        majority = crowd_majority(splits[k]) if k in splits else None
        if majority is not None:
            reports[f"{k}_ferplus_majority"] = evaluate(model, majority, labels)
    if "emodb" in splits:
        reports["emodb"] = emodb_from_probs(predict(model, splits["emodb"]), splits["emodb"])
    return reports


def train(modality: str, root: Path, out: Path, cfg: FitConfig, teacher: str | None,
          init: str | None = None, with_emodb: bool = False, arch: dict | None = None, device: str = "cpu") -> dict:
    """Train one student, save `<modality>.pt` and `<modality>.json` (history, reports) in `out`.
    Without a test split (the all-speaker audio model) it trains for cfg.epochs and keeps the
    last epoch; else it keeps the epoch with the best validation UAR. `out/<modality>.ckpt`
    holds the training state while it runs: the same command resumes after a stop."""
    out.mkdir(parents=True, exist_ok=True)
    splits, labels = load_splits(modality, root, out.parent / "cache", teacher)
    if with_emodb:
        splits["train"] = concat(splits["train"], splits.pop("emodb"))
    splits["train"] = teacher_targets(teacher, without_non_faces(splits["train"]), modality, labels)
    torch.manual_seed(cfg.seed)
    model = load_student(Path(init)) if init else build(modality, len(labels), arch)
    checkpoint = out / f"{modality}.ckpt"
    model, history = fit(model, splits["train"], splits["val"] if "test" in splits else None, labels, cfg,
                         _LOGGER.info, checkpoint=checkpoint, device=device)
    checkpoint.unlink(missing_ok=True)
    result = {"modality": modality, "labels": labels, "params": count_params(model),
              "config": asdict(cfg), "teacher": teacher if cfg.kd else None, "history": history,
              "init": init, "with_emodb": with_emodb, "arch": arch or {},
              "sizes": {k: len(v) for k, v in splits.items()},
              "reports": held_out_reports(model, splits, labels)}
    torch.save({"state_dict": model.state_dict(), "labels": labels, "arch": arch or {}}, out / f"{modality}.pt")
    (out / f"{modality}.json").write_text(json.dumps(result, indent=1))
    return result


def load_student(path: Path, modality: str | None = None) -> torch.nn.Module:
    """A student saved by `train` (modality from the file name unless given), eval mode."""
    return student_from(torch.load(path, map_location="cpu", weights_only=True), modality or path.stem)


def student_from(ckpt: dict, modality: str) -> torch.nn.Module:
    """The eval-mode student of a checkpoint `train` saved ({state_dict, labels, arch}), loaded."""
    model = build(modality, len(ckpt["labels"]), ckpt.get("arch"))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="folder with the corpora (default ../shared/data)")
    p.add_argument("--out", default="runs/ship")
    p.add_argument("--teacher", default=None, help="teacher checkpoint for distillation")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-kd", action="store_true", help="train from labels alone")
    p.add_argument("--max-minutes", type=float, default=1e9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--init", default=None, help="start from this student checkpoint (<modality>.pt)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--qat", type=float, default=0.0,
                   help="weight of the float-vs-fake-int8 agreement loss (quantization-aware fine-tuning)")
    p.add_argument("--with-emodb", action="store_true", help="audio: train on EmoDB too (second corpus)")
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier (the face teacher: 1.5)")
    p.add_argument("--hgr", type=float, default=0.0,
                   help="weight of the Soft-HGR term between the embedding and a learned label embedding")
    p.add_argument("--soft", type=float, default=0.0, help="face: weight of the FER+ crowd-vote cross-entropy")
    p.add_argument("--speaker-norm", action="store_true",
                   help="audio: live speaker adaptation (speaker statistics as a second input, edge/speaker.py)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model trains")


def _config(modality: str, args: argparse.Namespace) -> FitConfig:
    base = AUDIO_CFG if modality == "audio" else FACE_CFG
    return replace(base, epochs=args.epochs or base.epochs, seed=args.seed, kd=not args.no_kd,
                   max_minutes=args.max_minutes, lr=args.lr or base.lr, qat=args.qat, hgr=args.hgr, soft=args.soft)


def model_arch(width: float, hgr: float, speaker_norm: bool = False) -> dict:
    """`build`'s arch for a channel width, a Soft-HGR weight and speaker normalization (audio;
    live speaker adaptation) ({} for the plain student)."""
    return {**({"width": width} if width != 1.0 else {}), **({"hgr": True} if hgr > 0 else {}),
            **({"speaker_norm": True} if speaker_norm else {})}


def students_main(argv: list[str] | None = None) -> int:
    """`python -m distill.train students --data D --out runs/S [--modality audio|face|both] ...`."""
    p = argparse.ArgumentParser(prog="distill.train students")
    _fit_args(p)
    p.add_argument("--modality", choices=("audio", "face", "both"), default="both")
    p.add_argument("--score", default=None, metavar="A.pt,B.pt",
                   help="train nothing: score these students' ensemble (one: a student as the device answers "
                        "faces, mirrored too) on the held-out splits into --out/<modality>.json")
    p.add_argument("--zoom-views", type=zoom_factors, default=(), metavar="1.1[,1.2]",
                   help="with --score: faces also answered for the crop's centre enlarged by these factors "
                        "(and its mirror), as a bundle exported with the same --zoom-views answers")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device visible to torch; train with --device cpu")
    if args.speaker_norm and args.modality != "audio":
        p.error("--speaker-norm is for the audio student: use it with --modality audio")
    for modality in ("audio", "face") if args.modality == "both" else (args.modality,):
        if args.score:
            result = score_ensemble(modality, data_root(args.data), Path(args.out), args.score, args.zoom_views)
            _LOGGER.info("%s ensemble %s", modality, {k: round(v["uar"], 4) for k, v in result["reports"].items()})
            continue
        arch = model_arch(args.width, args.hgr, args.speaker_norm)
        result = train(modality, data_root(args.data), Path(args.out), _config(modality, args), args.teacher,
                       args.init, args.with_emodb and modality == "audio", arch, args.device)
        _LOGGER.info("%s test %s", modality, {k: round(v["uar"], 4) for k, v in result["reports"].items()})
    return 0
