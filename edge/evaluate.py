"""`avemo-edge eval`: run one bundle over a data folder and score it.

In:  a data folder (DESIGN.md: `labels.csv` with `path,label` and optionally `speaker`,
     `corpus`, or `path_audio`/`path_video` for audio-visual rows; read and checked by
     `edge.labels_csv`) and a bundle.
Out: `classification_report` (edge/metrics.py) plus `label_mapping`: how truth labels the
     model does not know were mapped (calm -> neutral) or left out (EmoDB's boredom), with
     counts. Nothing is dropped silently.

Audio items are scored on the whole utterance (the student pools over time); image items
are resized to the face input and standardized like live crops, or run through the face
detector first with `detect=True` (for photos that are not tight face crops).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import MediaError, in_range
from edge.labels_csv import LABELS_CSV, media_kind, read_labels
from edge.metrics import classification_report
from edge.settings import AUDIO, LABEL_ALIASES, LABELS


@dataclass(frozen=True)
class Row:
    path: Path
    label: str
    speaker: str


def read_labels_csv(folder: str | Path, modality: str) -> list[Row]:
    """The rows of `folder/labels.csv` (checked by `edge.labels_csv`) with a `modality` file.

    Audio ("audio") comes from `path_audio`, else `path`; faces ("face") from `path_image`,
    else `path`. Rows with no such file (the other modality's) are skipped.
    """
    columns, kind = (("path_audio", "path"), "audio") if modality == "audio" else (("path_image", "path"), "image")
    rows = []
    for row in read_labels(folder):
        path = next((row.paths[c] for c in columns if c in row.paths), None)
        if path is not None and media_kind(path) == kind:
            rows.append(Row(path, row.label, row.speaker))
    if not rows:
        raise MediaError(f"{Path(folder) / LABELS_CSV}: no {modality} rows to evaluate "
                         f"(no {kind} file in column {' or '.join(columns)})")
    return rows


def label_mapping(truth: list[str], model_labels: tuple[str, ...]) -> tuple[dict[str, str | None], dict[str, str]]:
    """(truth label -> scored label or None when left out, model label -> scored label).

    A truth label the model knows is kept; one it does not know goes through
    `LABEL_ALIASES` when the alias is a model label, else it is left out. A model label that
    never occurs in the (mapped) truth but whose alias does is scored as the alias, so an
    8-class audio model answering "calm" on a corpus without calm counts as "neutral".
    """
    known = set(model_labels)
    truth_map = {}
    for label in sorted(set(truth)):
        alias = LABEL_ALIASES.get(label)
        truth_map[label] = label if label in known else (alias if alias in known else None)
    scored = {v for v in truth_map.values() if v}
    pred_map = {m: (LABEL_ALIASES[m] if m not in scored and LABEL_ALIASES.get(m) in scored else m)
                for m in model_labels}
    return truth_map, pred_map


def _ordered(labels: set[str]) -> list[str]:
    return sorted(labels, key=lambda x: (LABELS.index(x) if x in LABELS else len(LABELS), x))


def score(truth: list[str], predictions: list[str], model_labels: tuple[str, ...]) -> dict:
    """Report over the rows whose truth maps onto the model's labels, with the mapping."""
    truth_map, pred_map = label_mapping(truth, model_labels)
    kept = [(truth_map[t], pred_map[p]) for t, p in zip(truth, predictions) if truth_map[t]]
    if not kept:
        raise MediaError(f"none of the data's labels {sorted(set(truth))} is known to the model "
                         f"(it knows {list(model_labels)})")
    y_true, y_pred = zip(*kept)
    report = classification_report(y_true, y_pred, _ordered(set(y_true) | set(y_pred)))
    left_out = {t: truth.count(t) for t, m in truth_map.items() if m is None}
    report["label_mapping"] = {"mapped": {t: m for t, m in truth_map.items() if m and m != t},
                               "left_out": left_out,
                               "predictions_mapped": {m: a for m, a in pred_map.items() if m != a}}
    return report


class FaceInputs:
    """Image file -> standardized face input, optionally through the face detector."""

    def __init__(self, spec, detect: bool) -> None:
        from edge.face import FaceCropper, FaceStage, _cv2
        self.cv2 = _cv2()
        self.cropper = FaceCropper(spec)
        self.stage = FaceStage(detect_every=1, spec=spec) if detect else None

    def __call__(self, path: Path) -> np.ndarray | None:
        gray = self.cv2.imread(str(path), self.cv2.IMREAD_GRAYSCALE)
        if gray is None or gray.size == 0:
            raise MediaError(f"{path}: not a readable image")
        if self.stage is not None:
            return self.stage.input if self.stage.process(gray) is not None else None
        size = self.cropper.spec.size
        return self.cropper.standardize(self.cv2.resize(gray, (size, size), interpolation=self.cv2.INTER_AREA))


def audio_input(path: Path) -> np.ndarray:
    from edge.audio import read_audio
    wave = read_audio(path)
    n = len(wave) // AUDIO.hop * AUDIO.hop
    if n < 2 * AUDIO.hop:
        raise MediaError(f"{path}: too short ({len(wave)} samples at {AUDIO.sample_rate} Hz)")
    return wave[None, :n]


def evaluate(model, folder: str | Path, detect: bool = False, limit: int | None = None) -> dict:
    """Score `model` (an `edge.pipeline.Model`) on a data folder; see module docstring."""
    modality = model.bundle.modality
    if limit is not None:
        in_range("limit (--limit)", limit, 1, 10**9, whole=True)
    rows = read_labels_csv(folder, modality)[:limit]
    make_input = audio_input if modality == "audio" else FaceInputs(model.bundle.face, detect)
    truth, predictions, missed = [], [], 0
    for row in rows:
        x = make_input(row.path)
        if x is None:
            missed += 1
            continue
        probs = model(x)
        truth.append(row.label)
        predictions.append(model.labels[int(np.argmax(probs))])
    report = score(truth, predictions, model.labels)
    report["model"] = model.bundle.name
    report["data"] = str(folder)
    report["no_face_found"] = missed
    return report
