"""`avemo-edge eval`: run one bundle over a data folder and score it.

In:  a data folder (DESIGN.md: `labels.csv` with `path,label` and optionally `speaker`,
     `corpus`, or `path_audio`/`path_video` for audio-visual rows; read and checked by
     `edge.labels_csv`) and a bundle.
Out: `classification_report` (edge/metrics.py) plus `label_mapping`: how truth labels the
     model does not know were mapped (calm -> neutral) or left out (EmoDB's boredom), with
     counts. Nothing is dropped silently.

An audio file is answered the way `avemo-edge run --audio FILE` answers it (`AudioReplay`):
the same replay loop (edge.stream.replay_steps: a hop every hop_s, the bundle's window ending
at each hop, the voicing gate), and the item's answer is the mean of the audio probabilities
over its voiced hops; a file with no voiced hop gets no answer and counts as an error
(column "none" of the confusion matrix). Image items are resized to the face input and
standardized like live crops, or run through the face detector first with `detect=True`
(for photos that are not tight face crops). `report["items"]` lists every item: path, truth,
predicted label (None: no answer) and probabilities.

An audio model with a speaker-statistics input (live speaker adaptation, edge/speaker.py) is
scored causally: each speaker's files are played one after the other in a fixed shuffled order,
the statistics carried from file to file (and forgotten where the next speaker starts), so file
i is answered with what the device would have heard by then; `report["no_adapt"]` is the same
model's answer without adaptation. `adapt=False` (`--no-adapt`) scores only that.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import MediaError, in_range
from edge.labels_csv import LABELS_CSV, media_kind, read_labels
from edge.metrics import classification_report
from edge.ring import AudioRing
from edge.settings import AUDIO, LABEL_ALIASES, LABELS

NO_ANSWER = "none"
"""Confusion-matrix column of the items the model gave no answer for (no voiced hop)."""


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


def score(truth: list[str], predictions: list[str | None], model_labels: tuple[str, ...]) -> dict:
    """Report over the rows whose truth maps onto the model's labels, with the mapping. A None
    or NO_ANSWER prediction (no answer) is an error, counted in the NO_ANSWER column."""
    truth_map, pred_map = label_mapping(truth, model_labels)
    kept = [(truth_map[t], pred_map[p] if p not in (None, NO_ANSWER) else NO_ANSWER)
            for t, p in zip(truth, predictions) if truth_map[t]]
    if not kept:
        raise MediaError(f"none of the data's labels {sorted(set(truth))} is known to the model "
                         f"(it knows {list(model_labels)})")
    y_true, y_pred = zip(*kept)
    columns = _ordered(set(y_true) | set(y_pred) - {NO_ANSWER}) + ([NO_ANSWER] if NO_ANSWER in y_pred else [])
    report = classification_report(y_true, y_pred, columns)
    left_out = {t: truth.count(t) for t, m in truth_map.items() if m is None}
    report["label_mapping"] = {"mapped": {t: m for t, m in truth_map.items() if m and m != t},
                               "left_out": left_out,
                               "predictions_mapped": {m: a for m, a in pred_map.items() if m != a}}
    return report


class FaceInputs:
    """Image file -> standardized face input, optionally through the face detector."""

    def __init__(self, spec, detect: bool, level_eyes: bool = False) -> None:
        from edge.face import FaceCropper, FaceStage, _cv2
        self.cv2 = _cv2()
        self.cropper = FaceCropper(spec)
        self.stage = FaceStage(detect_every=1, spec=spec, level_eyes=level_eyes) if detect else None

    def __call__(self, path: Path) -> np.ndarray | None:
        gray = self.cv2.imread(str(path), self.cv2.IMREAD_GRAYSCALE)
        if gray is None or gray.size == 0:
            raise MediaError(f"{path}: not a readable image")
        if self.stage is not None:
            return self.stage.input if self.stage.process(gray) is not None else None
        size = self.cropper.spec.size
        return self.cropper.standardize(self.cv2.resize(gray, (size, size), interpolation=self.cv2.INTER_AREA))


class FaceScorer:
    """Image path -> the face model's probabilities (None when `detect` finds no face)."""

    adapts = False
    """A face model has no speaker to adapt to."""

    def __init__(self, model, detect: bool) -> None:
        self.model, self.inputs = model, FaceInputs(model.bundle.face, detect, model.bundle.level_eyes)

    def __call__(self, path: Path) -> np.ndarray | None:
        x = self.inputs(path)
        return None if x is None else self.model(x).copy()


class AudioReplay:
    """Audio path or waveform -> mean probabilities over the voiced hops of its replay (module
    docstring), or None when no hop is voiced. `pipeline` is an audio-only edge Pipeline."""

    def __init__(self, pipeline) -> None:
        self.pipeline, self.model = pipeline, pipeline.audio
        self.ring = AudioRing(int(pipeline.profile.audio.ring_s * AUDIO.sample_rate))
        adaptation = pipeline.adaptation
        self.adapts = adaptation is not None and adaptation.enabled
        """True: the model adapts to its speaker (statistics carried from file to file)."""

    def reset_speaker(self) -> None:
        self.pipeline.reset_speaker()

    def __call__(self, path_or_wave: Path | np.ndarray) -> np.ndarray | None:
        from edge.audio import read_audio
        from edge.stream import replay_steps
        wave = read_audio(path_or_wave) if isinstance(path_or_wave, (str, Path)) else path_or_wave
        self.ring.clear()
        total, voiced = np.zeros(len(self.model.labels)), 0
        for result in replay_steps(self.pipeline, self.ring, wave, len(wave) / AUDIO.sample_rate):
            if result.audio["voiced"]:
                total += self.model.probs
                voiced += 1
        return total / voiced if voiced else None


def scorer(model_name: str | Path, modality: str, profile, backend: str = "auto", detect: bool = False,
           hop_s: float | None = None, adapt: bool = True):
    """The scorer `avemo-edge eval` uses for a bundle: AudioReplay or FaceScorer (`adapt`: an
    audio model with a speaker-statistics input adapts to each speaker)."""
    from edge.pipeline import Model, Pipeline
    if modality == "audio":
        return AudioReplay(Pipeline(profile, audio_model=str(model_name), face_model=None, backend=backend,
                                    hop_s=hop_s, adapt=adapt))
    from edge.bundle import load_bundle
    model = Model(load_bundle(model_name), backend, profile.runtime.backends, profile.device.threads)
    return FaceScorer(model, detect)


def play_order(score_item, rows: list[Row]) -> list[Row]:
    """The order rows are scored in: for a scorer that adapts to the speaker, each speaker's
    files one after the other in a fixed shuffled order (edge.speaker.causal_order), as a live
    device would hear them; else as given."""
    if not score_item.adapts:
        return rows
    from edge.speaker import causal_order
    return [rows[i] for i in causal_order([row.speaker for row in rows])]


def evaluate_rows(score_item, labels: tuple[str, ...], rows: list[Row]) -> dict:
    """Score every row with `score_item` (path -> probabilities or None; `adapts`, and
    `reset_speaker()` where it adapts), in `play_order` (an adapting scorer forgets the speaker
    where the next one starts); report + items (in the order played)."""
    items, speaker = [], None
    for row in play_order(score_item, rows):
        if score_item.adapts and row.speaker != speaker:
            score_item.reset_speaker()
            speaker = row.speaker
        probs = score_item(row.path)
        predicted = None if probs is None else labels[int(np.argmax(probs))]
        items.append({"path": str(row.path), "speaker": row.speaker, "truth": row.label, "predicted": predicted,
                      "probs": None if probs is None else {k: round(float(p), 4) for k, p in zip(labels, probs)}})
    report = score([it["truth"] for it in items], [it["predicted"] for it in items], labels)
    report["no_answer"] = sum(it["predicted"] is None for it in items)
    report["items"] = items
    return report


def evaluate(model_name: str | Path, folder: str | Path, profile, backend: str = "auto", detect: bool = False,
             limit: int | None = None, adapt: bool = True) -> dict:
    """Score the bundle `model_name` on a data folder; see module docstring. A model that adapts
    to the speaker is scored causally per speaker, and `report["no_adapt"]` is its answer
    without adaptation (each window's own statistics) on the same files."""
    from edge.bundle import load_bundle
    if limit is not None:
        in_range("limit (--limit)", limit, 1, 10**9, whole=True)
    bundle = load_bundle(model_name)
    rows = read_labels_csv(folder, bundle.modality)[:limit]
    score_item = scorer(model_name, bundle.modality, profile, backend, detect, adapt=adapt)
    report = evaluate_rows(score_item, bundle.labels, rows)
    if score_item.adapts:
        report["no_adapt"] = evaluate_rows(scorer(model_name, "audio", profile, backend, adapt=False),
                                           bundle.labels, rows)
    report["model"] = bundle.name
    report["data"] = str(folder)
    return report
