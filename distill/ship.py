"""The shipped models: real corpora -> trained students -> bundles in edge/models/{audio,face}.

In:  --data DIR holding ravdess_speech/, fer2013/train/ and (evaluation only) emodb_2s/
     (DESIGN.md "Shared data"); optionally --teacher runs/T/teacher.pt for distillation.
Out: under --out (default runs/ship): `<modality>.pt` (student state dict + config),
     `<modality>.json` (history, held-out reports); `export` writes the bundles with
     `distill.export` and the metrics, agreement and provenance in each manifest.

Splits (fixed, never tuned on test):
  RAVDESS speech: the shipped audio model trains on all 20 actors (optionally with EmoDB,
  `--with-emodb`) for the recipe's fixed epoch count; its figures are the recipe's actor
  cross-validation and leave-one-corpus-out runs (distill/crossval.py), which export copies
  into the manifest (`--crossval DIR`). Actors 17-18 (trained on) calibrate int8 and check
  int8-vs-float agreement.
  FER2013 train folder: per class, a fixed random (seed 0) 10 % test, 5 % validation.
  EmoDB: trained on only with --with-emodb (chosen by leave-one-corpus-out); otherwise
  scored on its 6 labels shared with the audio model (boredom dropped; the model's calm is
  merged into neutral, surprise ignored).

Commands: `python -m distill.ship train --modality audio|face [...]`, `... export`;
`students_main` is `python -m distill.train students ...`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
from dataclasses import asdict, replace
from datetime import date
from pathlib import Path

import numpy as np
import torch

from distill.distillation import (WINDOW_S, Arrays, FitConfig, audio_windows, evaluate, fit, predict,
                                  predict_with_embedding, standardize_faces, crop_samples)
from distill.models.students import EMBEDDING_DIM, AudioStudent, FaceStudent, count_params, fold_batchnorm
from edge.errors import AvemoError
from edge.metrics import classification_report
from edge.settings import ALIGNMENT, AUDIO, FACE, LABELS

_LOGGER = logging.getLogger(__name__)
AUDIO_LABELS = list(LABELS)
FACE_LABELS = ["neutral", "happy", "sad", "angry", "fear", "disgust", "surprise"]
EMODB_LABELS = ["neutral", "happy", "sad", "angry", "fear", "disgust"]
SHARED_LABELS = {"audio": AUDIO_LABELS, "face": FACE_LABELS}
"""Label order of the models trained on the shared corpora (RAVDESS's 8, FER2013's 7)."""
CALIBRATION_ACTORS = ("Actor_17", "Actor_18")
FER_TEST, FER_VAL = 0.10, 0.05
TRIM_DB = 40.0
"""Leading/trailing hops quieter than peak - TRIM_DB are cut (an offline VAD)."""
AUDIO_WITH_EMODB = True
"""The shipped audio recipe trains on EmoDB as a second corpus (chosen by cross-validation and
leave-one-corpus-out, docs/students.md)."""
AUDIO_CFG = FitConfig(epochs=60, batch=32, lr=3e-3, label_smoothing=0.1, partial_p=0.5)
FACE_CFG = FitConfig(epochs=14, batch=128, lr=4e-3, weight_decay=1e-3, balance=0.5)
FACE_TEACHER_ARGS = ("--width", "1.5", "--hgr", "0.1", "--soft", "0.5", "--no-kd", "--epochs", "40")
"""The face teacher's recipe (`students --modality face` options; docs/students.md "Face
teacher"): the student net at width 1.5, half FER+ votes, Soft-HGR against the label embedding."""


def data_root(arg: str | None) -> Path:
    """--data, else $AVEMO_DATA, else ../shared/data next to the repository."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return Path(arg or os.environ.get("AVEMO_DATA") or default)


# ---------------------------------------------------------------- audio data

def trim(wave: np.ndarray, min_len: int, hop: int = AUDIO.hop) -> np.ndarray:
    """The span from the first to the last hop within TRIM_DB of the loudest one, widened
    symmetrically to `min_len` samples where the file allows (real room audio, not padding)."""
    n = len(wave) // hop
    if n < 2:
        return wave
    db = 10 * np.log10(np.mean(wave[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    active = np.flatnonzero(db > db.max() - TRIM_DB)
    start, end = active[0] * hop, (active[-1] + 1) * hop
    grow = max(0, min_len - (end - start))
    start = max(0, start - grow // 2 - hop)
    end = min(len(wave), max(end + grow - grow // 2 + hop, start + min_len))
    return wave[max(0, min(start, end - min_len)):end]


def audio_arrays(items: list, labels: list[str], cache: Path) -> Arrays:
    """Decoded, trimmed, zero-padded waveforms [N, L] with lengths and label indices."""
    from distill.data.cache import load_waveforms
    waves = [trim(w, crop_samples()) for w in load_waveforms(items, cache_dir=cache)]
    lengths = np.array([len(w) for w in waves])
    x = np.zeros((len(waves), lengths.max()), np.float32)
    for i, w in enumerate(waves):
        x[i, : len(w)] = w
    y = np.array([labels.index(it.label) for it in items], np.int64)
    return Arrays(x=x, y=y, lengths=lengths, speaker=np.array([it.speaker for it in items]),
                  meta={"speakers": sorted({it.speaker for it in items})})


def _ravdess_items(root: Path) -> dict[str, list]:
    """All actors train; "val" is the calibration actors (trained on: int8 calibration only)."""
    from distill.data import load_corpus
    items = load_corpus(root / "ravdess_speech")
    return {"train": items, "val": [it for it in items if it.speaker in CALIBRATION_ACTORS]}


def concat(a: Arrays, b: Arrays) -> Arrays:
    """Two audio splits as one (waveforms re-padded to the longer length)."""
    width = max(a.x.shape[1], b.x.shape[1])
    x = np.zeros((len(a) + len(b), width), np.float32)
    x[: len(a), : a.x.shape[1]], x[len(a):, : b.x.shape[1]] = a.x, b.x
    return Arrays(x=x, y=np.concatenate([a.y, b.y]), lengths=np.concatenate([a.lengths, b.lengths]),
                  speaker=np.concatenate([a.speaker, b.speaker]),
                  meta={"speakers": a.meta["speakers"] + b.meta["speakers"]})


def emodb_arrays(root: Path, cache: Path) -> Arrays:
    """EmoDB's 6 shared labels, read from its labels.csv (boredom rows dropped)."""
    from distill.data import Item
    from edge.labels_csv import read_labels
    items = [Item(label=r.label, speaker=r.speaker, corpus="emodb", audio=str(r.paths["path"]))
             for r in read_labels(root / "emodb_2s") if r.label in EMODB_LABELS]
    return audio_arrays(items, AUDIO_LABELS, cache)


def emodb_from_probs(probs: np.ndarray, data: Arrays) -> dict:
    """Scores on EmoDB's 6 labels: calm folded into neutral, surprise never predicted."""
    probs6 = probs[:, [AUDIO_LABELS.index(k) for k in EMODB_LABELS]].copy()
    probs6[:, 0] += probs[:, AUDIO_LABELS.index("calm")]
    truth = [AUDIO_LABELS[i] for i in data.y]
    return classification_report(truth, [EMODB_LABELS[i] for i in probs6.argmax(1)], EMODB_LABELS)


# ---------------------------------------------------------------- face data

def fer_items(root: Path, seed: int = 0) -> dict[str, list]:
    """Stratified fixed split of the FER2013 train folder (module docstring)."""
    from distill.data import load_corpus
    items = load_corpus(root / "fer2013" / "train")
    y = np.array([FACE_LABELS.index(it.label) for it in items])
    part = np.zeros(len(items), np.int64)            # 0 train, 1 val, 2 test
    rng = np.random.default_rng(seed)
    for c in range(len(FACE_LABELS)):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test, n_val = int(round(FER_TEST * len(idx))), int(round(FER_VAL * len(idx)))
        part[idx[:n_test]], part[idx[n_test:n_test + n_val]] = 2, 1
    return {k: [it for it, q in zip(items, part) if q == p] for p, k in enumerate(("train", "val", "test"))}


def face_arrays(items: list, labels: list[str] = FACE_LABELS) -> Arrays:
    """Gray crops float32 [N, 1, S, S] on 0..255, label indices and, for FER2013 faces, the
    FER+ vote distributions (`soft`) with the not-a-face mask in meta."""
    from distill.data.cache import load_faces
    from distill.data.ferplus import vote_targets
    faces = load_faces(items, cache_dir=None).astype(np.float32)[:, None]
    votes = vote_targets(items, labels)
    soft, not_a_face = votes if votes is not None else (None, np.zeros(len(items), bool))
    return Arrays(x=faces, y=np.array([labels.index(it.label) for it in items], np.int64), soft=soft,
                  meta={"not_a_face": not_a_face})


def without_non_faces(data: Arrays) -> Arrays:
    """The split minus the images the FER+ crowd called "not a face"."""
    keep = ~data.meta.get("not_a_face", np.zeros(len(data), bool))
    if keep.all():
        return data
    return replace(data, x=data.x[keep], y=data.y[keep], soft=None if data.soft is None else data.soft[keep],
                   meta={**data.meta, "not_a_face": np.zeros(int(keep.sum()), bool)})


def crowd_majority(data: Arrays) -> Arrays | None:
    """The split relabelled with the FER+ majority vote (faces with a tie, no vote or a
    not-a-face majority left out), or None without votes: the second truth to report."""
    if data.soft is None:
        return None
    top = np.sort(data.soft, axis=1)
    keep = (top[:, -1] > top[:, -2]) & ~data.meta["not_a_face"]
    return replace(data, x=data.x[keep], y=data.soft[keep].argmax(1), soft=data.soft[keep], meta={})


SHARED_CORPUS = {"audio": "ravdess_speech", "face": "fer2013"}
"""The folder under the data root that holds each modality's shared corpus."""
SHARED_SPLIT = {"audio": "RAVDESS actor 5-fold cross-validation of the recipe (4 unseen actors per fold), "
                         "int8, scored by avemo-edge eval's replay (voiced hops pooled)",
                "face": "FER2013 held-out 10 % of train (stratified, seed 0)"}
SHARED_PROVENANCE = {
    "audio": "RAVDESS speech (all 20 actors; CC BY-NC-SA 4.0)",
    "face": "FER2013 train folder (stratified seed-0 split: 85 % train, 5 % validation/calibration, "
            "10 % test; research use)"}


def has_shared_corpus(modality: str, root: Path) -> bool:
    return (root / SHARED_CORPUS[modality]).is_dir()


def shared_corpus_items(modality: str, root: Path) -> dict[str, list] | None:
    """The fixed train/val/test item lists of the shared corpus for `modality` (RAVDESS for
    audio, FER2013 for face; module docstring), or None when `root` does not hold it."""
    if not has_shared_corpus(modality, root):
        return None
    return _ravdess_items(root) if modality == "audio" else fer_items(root)


def item_arrays(modality: str, items: list, labels: list[str], cache: Path) -> Arrays:
    return audio_arrays(items, labels, cache) if modality == "audio" else face_arrays(items, labels)


# ---------------------------------------------------------------- training

def teacher_targets(teacher_path: str | None, data: Arrays, modality: str, labels: list[str]) -> Arrays:
    """Attach the teacher's logits (columns reordered to `labels`; a label the teacher lacks
    gets -30) and common-space embedding to every item, if a teacher is given. A teacher saved
    by `train` (`.../face.pt`, e.g. the wide Soft-HGR face teacher) answers like `member_targets`;
    a comma-separated list of them is an ensemble teacher."""
    if not teacher_path:
        return data
    members = [Path(p) for p in teacher_path.split(",")]
    saved = [torch.load(p, map_location="cpu", weights_only=False) for p in members]
    if all("format" not in ckpt for ckpt in saved):              # saved by `train`, not a Teacher
        for p, ckpt in zip(members, saved):
            if ckpt["labels"] != labels:
                raise AvemoError(f"teacher {p}: its labels differ from the student's {labels}; "
                                 "train the teacher on the same corpus")
        logits, emb = member_targets([load_student(p, modality) for p in members], data)
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


def member_targets(members: list[torch.nn.Module], data: Arrays) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits, embedding) a student-format teacher gives each item: the log of its mean
    probabilities over the members and, for faces, over the crop and its mirror image (flip
    test-time augmentation: +1.4 points FER+ majority accuracy for the first face teacher on
    validation); the embedding averaged the same way, for a single member only (the members'
    common spaces differ)."""
    views = [data] if data.modality == "audio" else [data, replace(data, x=np.ascontiguousarray(data.x[..., ::-1]))]
    outs = [predict_with_embedding(m, v) for m in members for v in views]
    logits = np.log(np.clip(np.mean([o[0] for o in outs], axis=0), 1e-6, None)).astype(np.float32)
    emb = np.mean([o[1] for o in outs], axis=0).astype(np.float32) if len(members) == 1 else None
    return logits, emb


def build(modality: str, n_labels: int, arch: dict | None = None) -> torch.nn.Module:
    """A student (or, with `arch` such as {"width": 1.5, "hgr": True}, a teacher of the same shape)."""
    return AudioStudent(n_labels, **(arch or {})) if modality == "audio" else FaceStudent(n_labels, **(arch or {}))


def load_splits(modality: str, root: Path, cache: Path, teacher: str | None = None) -> tuple[dict[str, Arrays], list[str]]:
    """(splits, labels): the shared corpora (module docstring; audio adds "emodb"), or any one
    corpus folder (e.g. the synthetic one) split by speaker like the teacher was, else fold 0 of 5."""
    items = shared_corpus_items(modality, root)
    if items is None:
        return generic_splits(modality, root, cache, teacher)
    labels = SHARED_LABELS[modality]
    splits = {k: item_arrays(modality, v, labels, cache) for k, v in items.items()}
    if modality == "audio" and (root / "emodb_2s").is_dir():
        splits["emodb"] = emodb_arrays(root, cache)
    return splits, labels


def generic_splits(modality: str, root: Path, cache: Path, teacher: str | None) -> tuple[dict[str, Arrays], list[str]]:
    parts, labels = generic_items(modality, root, teacher)
    return {k: item_arrays(modality, v, labels, cache) for k, v in parts.items()}, labels


def generic_items(modality: str, root: Path, teacher: str | None) -> tuple[dict[str, list], list[str]]:
    """A corpus folder's items split by speaker like the teacher was (its split.json), else fold 0 of 5."""
    from distill.data import fold_split, load_corpus, read_split, split_by_speaker
    items = [it for it in load_corpus(root) if it.label and (it.has_audio if modality == "audio" else it.image)]
    split_file = Path(teacher).parent / "split.json" if teacher else None
    if split_file is not None and split_file.is_file():
        named = read_split(split_file)
        parts = split_by_speaker(items, named["test"], named["val"])
    else:
        parts = fold_split(items, 5, 0)
    labels = [k for k in LABELS if any(it.label == k for it in items)]
    return dict(zip(("train", "val", "test"), parts)), labels


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
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = build(modality or path.stem, len(ckpt["labels"]), ckpt.get("arch"))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


# ---------------------------------------------------------------- export

def model_inputs(modality: str, data: Arrays) -> list[np.ndarray]:
    """Per item, its runtime inputs stacked on axis 0: audio [W, T] (the 2.0 s windows,
    hop 0.5 s), face [1, 1, S, S] (the standardized crop). Feed each `window[None]`."""
    if modality == "audio":
        return [audio_windows(w, int(n)) for w, n in zip(data.x, data.lengths)]
    x = standardize_faces(torch.from_numpy(data.x)).numpy()
    return [x[i:i + 1] for i in range(len(x))]


def singles(inputs: list[np.ndarray], labels: np.ndarray, per_item: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Up to `per_item` single model inputs [1, ...] per item, with the item's label."""
    xs, ys = [], []
    for group, y in zip(inputs, labels):
        xs += [g[None] for g in group[:per_item]]
        ys += [y] * min(per_item, len(group))
    return xs, np.array(ys)


def split_arrays(modality: str, root: Path, part: str, cache: Path = Path("runs/cache")) -> Arrays:
    """One split ('train', 'val', 'test') of the modality's corpus (see `load_splits`)."""
    items = shared_corpus_items(modality, root)
    if items is None:
        return generic_splits(modality, root, cache, None)[0][part]
    return item_arrays(modality, items[part], SHARED_LABELS[modality], cache)


def calibration_inputs(modality: str, data: str | None = None, limit: int = 200) -> list[np.ndarray]:
    """Model inputs from the validation split (actors 17-18 / FER val), never test speakers."""
    return calibration_sample(modality, split_arrays(modality, data_root(data), "val"), limit)


def calibration_sample(modality: str, val: Arrays, limit: int = 200) -> list[np.ndarray]:
    """Up to `limit` model inputs spread evenly over `val` (at most 2 per item)."""
    xs, _ = singles(model_inputs(modality, val), val.y, 2)
    return xs[:: max(1, len(xs) // limit)][:limit]


def report_from_probs(probs: np.ndarray, data: Arrays, labels: list[str]) -> dict:
    return classification_report([labels[i] for i in data.y], [labels[i] for i in probs.argmax(1)], labels)


STATS_INPUT = "speaker_stats"
"""The second input of a speaker-normalized audio student: statistics [1, 2, n_mels] (edge/speaker.py)."""


def input_spec(modality: str, speaker_norm: bool = False) -> dict:
    if modality == "audio":
        spec = {"name": "waveform", "shape": [1, -1], "dtype": "float32", "frontend": AUDIO.to_dict(),
                "window_s": WINDOW_S}
        return {**spec, "speaker_stats": STATS_INPUT} if speaker_norm else spec
    return {"name": "face", "shape": [1, 1, FACE.size, FACE.size], "dtype": "float32", "face": FACE.to_dict(),
            "mirror_average": True, "alignment": ALIGNMENT.to_dict()}


def provenance(modality: str, result: dict, root: Path) -> dict:
    corpus = SHARED_PROVENANCE[modality] if has_shared_corpus(modality, root) else \
        f"data folder {root} (labels.csv; speaker fold 0 of 5 held out for test)"
    teacher = result["teacher"] or "none: trained from labels alone (no teacher checkpoint was available)"
    emodb = "trained on as a second corpus (chosen by cross-validation and leave-one-corpus-out; " \
            "EmoDB, research use)" if result.get("with_emodb") else "evaluation only (never trained, tuned or calibrated on)"
    if result.get("with_emodb"):
        corpus += " + EmoDB (German, 10 speakers, its 6 shared labels; research use)"
    return {"trained_on": corpus, "teacher": teacher, "created": date.today().isoformat(),
            "code": _git_sha(), "params": result["params"], "epochs_run": len(result["history"]),
            "init": result.get("init"), "config": result["config"], "emodb": emodb}


def _git_sha() -> str:
    """HEAD's commit, with "-dirty" when tracked files differ from it (the export's code is then
    not exactly that commit)."""
    proc = subprocess.run(["git", "describe", "--always", "--abbrev=40", "--dirty"],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() or "uncommitted working tree"


def export_modality(modality: str, runs: Path, root: Path, models: Path, target: str,
                    crossval: Path | None = None) -> Path:
    """Student checkpoint -> float ONNX -> int8 bundle in models/<modality> with metrics: held-out
    figures, or for the all-speaker audio model the recipe's cross-validation in `crossval`."""
    result = json.loads((runs / f"{modality}.json").read_text())
    labels = result["labels"]
    student = load_student(runs / f"{modality}.pt")
    val = split_arrays(modality, root, "val")
    held_out = not (modality == "audio" and has_shared_corpus("audio", root))
    shift = adjust_for_priors(student, val, train_label_counts(modality, root, labels), labels) if held_out \
        else {"tau": 0.0, "why": "no held-out split to choose tau on (all speakers trained on)"}
    folder = student_bundle(student, modality, labels, models / modality, target, val,
                            {**provenance(modality, result, root), "prior_shift": shift})
    metrics = held_out_metrics(folder, modality, root, labels, result["reports"]["val"]) if held_out \
        else crossval_metrics(crossval)
    _set_metrics(folder, metrics)
    return folder


def student_bundle(student: torch.nn.Module, modality: str, labels: list[str], folder: Path, target: str,
                   calib: Arrays, provenance: dict, tflite: bool = True) -> Path:
    """Float ONNX of `student` -> the target's bundle in `folder`, calibrated on and agreement
    checked against `calib` (metrics left empty); `tflite` False leaves out the target's
    LiteRT payload (a bundle only scored with onnxruntime)."""
    import tempfile

    from distill.export import export_onnx, with_own_stats
    from distill.quantize import load_scheme, make_bundle
    speaker = getattr(student, "speaker_norm", False)
    spec = input_spec(modality, speaker)
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


def crossval_metrics(crossval: Path | None) -> dict:
    """The manifest metrics of an all-speaker model: its recipe's runtime-scored cross-validation
    (distill/crossval.py --score), mean over folds as the headline figures."""
    if crossval is None:
        return {"split": "none held out: trained on all speakers (run python -m distill.crossval ... --score "
                         "and export with --crossval DIR for the recipe's figures)"}
    summary = json.loads((crossval / "summary-runtime.json").read_text())
    return {"split": SHARED_SPLIT["audio"], "uar": summary["ravdess_uar"]["mean"],
            "accuracy": summary["ravdess_accuracy"]["mean"], "macro_f1": summary["ravdess_macro_f1"]["mean"],
            "crossval": summary, "crossval_dir": str(crossval)}


def train_label_counts(modality: str, root: Path, labels: list[str]) -> np.ndarray:
    """Training items per label (from the item lists, no decoding); ones off the shared corpora."""
    items = shared_corpus_items(modality, root)
    if items is None:
        return np.ones(len(labels))
    return np.array([sum(it.label == label for it in items["train"]) for label in labels], np.float64)


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


def held_out_metrics(folder: Path, modality: str, root: Path, labels: list[str], validation: dict | None) -> dict:
    """Test-split figures of each ONNX payload the bundle has (int8, and float or fp16), and
    EmoDB for audio, scored by `avemo-edge eval`'s own code (edge.evaluate) with onnxruntime;
    `validation` is the torch model's validation report."""
    from edge.bundle import load_bundle
    from edge.evaluate import read_labels_csv
    bundle = load_bundle(folder)
    parts = {"test": split_rows(modality, root, "test")}
    if modality == "audio" and (root / "emodb_2s").is_dir():
        parts["emodb"] = read_labels_csv(root / "emodb_2s", "audio")
    out = {"split": SHARED_SPLIT[modality] if has_shared_corpus(modality, root)
           else f"{root.name}: test speakers of fold 0 of 5 (never seen)"}
    fp16 = bundle.manifest.get("quantization", {}).get("scheme") == "fp16"
    kinds = [(k, t) for k, t in (("int8.onnx", "int8"), ("onnx", "fp16" if fp16 else "float"))
             if bundle.has_payload(k)]
    for kind, tag in kinds:
        for part, rows in parts.items():
            out[f"{part}_{tag}"] = payload_report(folder, kind, rows)
    headline = out[f"test_{kinds[0][1]}"]
    out.update(accuracy=headline["accuracy"], uar=headline["uar"], macro_f1=headline["macro_f1"],
               validation_torch=validation)
    return out


def payload_report(folder: Path, kind: str, rows: list, adapt: bool = True) -> dict:
    """`avemo-edge eval`'s report (without its item list) for the bundle's `kind` payload run
    by onnxruntime: the same replay, gate and pooling (audio) or crop and mirror (face), and
    the same causal per-speaker order for a model that adapts to the speaker (`adapt`)."""
    from edge.backends.onnxruntime import OrtSession
    from edge.bundle import load_bundle
    from edge.evaluate import evaluate_rows, scorer
    from edge.profiles import load_profile
    bundle = load_bundle(folder)
    score_item = scorer(folder, bundle.modality, load_profile("x86"), "onnxruntime", adapt=adapt)
    score_item.model.session = OrtSession(bundle.payload(kind), bundle.outputs)
    report = evaluate_rows(score_item, bundle.labels, rows)
    report.pop("items")
    return report


def split_rows(modality: str, root: Path, part: str) -> list:
    """edge.evaluate Rows (path, label, speaker) of one split of the modality's corpus."""
    from edge.evaluate import Row
    items = shared_corpus_items(modality, root) or generic_items(modality, root, None)[0]
    return [Row(Path(it.audio if modality == "audio" else it.image), it.label, it.speaker) for it in items[part]]


def remeasure(folder: Path, root: Path) -> bool:
    """Replace the metrics a re-quantized bundle copied from its source by figures measured on
    its own payloads (the shared corpora's test split); False where those corpora are absent or
    the metrics are a cross-validation of the recipe (an all-speaker model has no test split)."""
    from edge.bundle import load_bundle
    bundle = load_bundle(folder)
    if not has_shared_corpus(bundle.modality, root) or list(bundle.labels) != SHARED_LABELS[bundle.modality] \
            or "crossval" in bundle.manifest.get("metrics", {}):
        return False
    validation = bundle.manifest.get("metrics", {}).get("validation_torch")
    _set_metrics(folder, held_out_metrics(folder, bundle.modality, root, list(bundle.labels), validation))
    return True


def _set_metrics(folder: Path, metrics: dict) -> None:
    from edge.bundle import MANIFEST, write_manifest
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["metrics"] = metrics
    write_manifest(folder, {k: v for k, v in manifest.items() if k != "files"})


def export_all(runs: Path, root: Path, models: Path, target: str = "x86", crossval: Path | None = None) -> int:
    for modality in ("audio", "face"):
        if (runs / f"{modality}.pt").is_file():
            folder = export_modality(modality, runs, root, models, target, crossval)
            _LOGGER.info("wrote %s", folder)
    return 0


# ---------------------------------------------------------------- CLI

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
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device visible to torch; train with --device cpu")
    if args.speaker_norm and args.modality != "audio":
        p.error("--speaker-norm is for the audio student: use it with --modality audio")
    for modality in ("audio", "face") if args.modality == "both" else (args.modality,):
        result = train(modality, data_root(args.data), Path(args.out), _config(modality, args), args.teacher,
                       args.init, args.with_emodb and modality == "audio", model_arch(args.width, args.hgr, args.speaker_norm), args.device)
        _LOGGER.info("%s test %s", modality, {k: round(v["uar"], 4) for k, v in result["reports"].items()})
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="distill.ship")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("train", add_help=False)
    ex = sub.add_parser("export")
    ex.add_argument("--runs", default="runs/ship")
    ex.add_argument("--data", default=None)
    ex.add_argument("--models", default="edge/models")
    ex.add_argument("--target", default="x86", help="firmware profile whose quantization the bundles use")
    ex.add_argument("--crossval", type=Path, default=None,
                    help="audio: the recipe's cross-validation folder (distill.crossval --score) for the manifest")
    args, rest = p.parse_known_args(argv)
    if args.cmd == "train":
        return students_main(rest)
    return export_all(Path(args.runs), data_root(args.data), Path(args.models), args.target, args.crossval)


if __name__ == "__main__":
    raise SystemExit(main())
