"""The shared corpora and their fixed splits, as `Arrays` and as runtime model inputs.

In:  a data root (--data, else $AVEMO_DATA, else ../shared/data; DESIGN.md "Shared data")
     holding ravdess_speech/, fer2013/train/ and emodb_2s/, or any one corpus folder
     (`distill.data.load_corpus`, e.g. the synthetic one).
Out: `load_splits(modality, root, cache)` -> ({"train", "val", "test"[, "emodb"]}: Arrays, labels),
     the entry point; `split_arrays` / `split_rows` one split as Arrays or as edge.evaluate Rows;
     `calibration_inputs` runtime model inputs from the validation split (int8 calibration).
     Arrays: audio x float32 [N, L] trimmed, zero-padded 16 kHz waveforms with lengths [N];
     face x float32 [N, 1, S, S] gray crops on 0..255 (with FER+ votes in `soft`); y int64 [N].

Splits (fixed, never tuned on test):
  RAVDESS speech: the shipped audio model trains on all 20 actors (optionally with EmoDB,
  `--with-emodb`) for the recipe's fixed epoch count; its figures are the recipe's actor
  cross-validation and leave-one-corpus-out runs (distill/crossval.py), which the export copies
  into the manifest. Actors 17-18 (trained on) are "val": they calibrate int8 and check
  int8-vs-float agreement.
  FER2013 train folder: per class, a fixed random (seed 0) 10 % test, 5 % validation.
  EmoDB: trained on only with --with-emodb (chosen by leave-one-corpus-out); otherwise
  scored on its 6 labels shared with the audio model (boredom dropped; the model's calm is
  merged into neutral, surprise ignored).
  Any other corpus folder: split by speaker like the teacher was (its split.json), else
  speaker fold 0 of 5.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from distill.distillation import Arrays, audio_windows, crop_samples, standardize_faces
from edge.metrics import classification_report
from edge.settings import AUDIO, LABELS

AUDIO_LABELS = list(LABELS)
FACE_LABELS = ["neutral", "happy", "sad", "angry", "fear", "disgust", "surprise"]
EMODB_LABELS = ["neutral", "happy", "sad", "angry", "fear", "disgust"]
SHARED_LABELS = {"audio": AUDIO_LABELS, "face": FACE_LABELS}
"""Label order of the models trained on the shared corpora (RAVDESS's 8, FER2013's 7)."""
CALIBRATION_ACTORS = ("Actor_17", "Actor_18")
FER_TEST, FER_VAL = 0.10, 0.05
TRIM_DB = 40.0
"""Leading/trailing hops quieter than peak - TRIM_DB are cut (an offline VAD)."""


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
    keep = has_majority(data.soft, data.meta["not_a_face"])
    return replace(data, x=data.x[keep], y=data.soft[keep].argmax(1), soft=data.soft[keep], meta={})


def has_majority(soft: np.ndarray, not_a_face: np.ndarray) -> np.ndarray:
    """bool [N]: the vote distribution has one top label and the crowd did not call it not-a-face."""
    top = np.sort(soft, axis=1)
    return (top[:, -1] > top[:, -2]) & ~not_a_face


# ---------------------------------------------------------------- shared corpora and splits

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


# ---------------------------------------------------------------- runtime model inputs (int8 calibration, agreement)

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


# ---------------------------------------------------------------- scores and counts

def report_from_probs(probs: np.ndarray, data: Arrays, labels: list[str]) -> dict:
    return classification_report([labels[i] for i in data.y], [labels[i] for i in probs.argmax(1)], labels)


def train_label_counts(modality: str, root: Path, labels: list[str]) -> np.ndarray:
    """Training items per label (from the item lists, no decoding); ones off the shared corpora."""
    items = shared_corpus_items(modality, root)
    if items is None:
        return np.ones(len(labels))
    return np.array([sum(it.label == label for it in items["train"]) for label in labels], np.float64)


def crowd_majority_rows(root: Path, part: str) -> list | None:
    """edge.evaluate Rows of one FER2013 split labelled with the FER+ majority (as
    `crowd_majority`), or None where the corpus or its votes are absent."""
    from distill.data.ferplus import vote_targets
    from edge.evaluate import Row
    if not has_shared_corpus("face", root):
        return None
    items = fer_items(root)[part]
    votes = vote_targets(items, FACE_LABELS)
    if votes is None:
        return None
    soft, not_a_face = votes
    keep = has_majority(soft, not_a_face)
    return [Row(Path(it.image), FACE_LABELS[int(soft[i].argmax())], it.speaker)
            for i, it in enumerate(items) if keep[i]]


def split_rows(modality: str, root: Path, part: str) -> list:
    """edge.evaluate Rows (path, label, speaker) of one split of the modality's corpus."""
    from edge.evaluate import Row
    items = shared_corpus_items(modality, root) or generic_items(modality, root, None)[0]
    return [Row(Path(it.audio if modality == "audio" else it.image), it.label, it.speaker) for it in items[part]]
