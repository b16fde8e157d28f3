"""CNN face detector: a detector bundle (YuNet) run on edge's own backends.

In:  a BGR (or gray) uint8 frame [H, W, 3] of any size.
Out: `CnnDetector.detect(frame)` -> face boxes (x, y, w, h) in frame pixels, best score
     first, in the face student's convention: squares from forehead to chin, as the Haar
     cascade's (below); `CnnDetector.landmarks[i]` is a float32 [5, 2] array of (x, y)
     frame pixels for box i (right eye, left eye, nose tip, right and left mouth corners,
     as seen in the image: the subject's right eye is on the image's left), `scores[i]`
     its score and `raw_boxes[i]` the detector's own box.

The frame is shrunk (nearest neighbour, by precomputed row/column indices) to fit the
bundle's fixed input [1, 3, h, w] and written top-left into a float32 buffer allocated
once per frame shape; the rest of that buffer stays 0 (black padding). The bundle's
outputs per stride s (8, 16, 32) are YuNet's: cls and obj [1, n, 1], bbox [1, n, 4],
kps [1, n, 10] for the n = (h / s) * (w / s) anchor points, row-major. Score =
sqrt(cls * obj); box centre = (anchor + bbox[:2]) * s, size = exp(bbox[2:]) * s; landmark
k = (anchor + kps[2k:2k+2]) * s (OpenCV's FaceDetectorYN decoding). Candidates over
`score_threshold` go through greedy non-maximum suppression at `nms_iou`.

YuNet's boxes are taller than wide (height / width ~1.4, hairline to chin) where the Haar
boxes the face student's crops were tuned on are squares ~0.93 of that height, centred
~0.035 of it higher: the bundle's `student_box` {side, dy} (fractions of the box height,
measured on the demo and CREMA-D frames, docs/performance.md) maps one onto the other.
"""
from __future__ import annotations

import numpy as np

from edge.backends import has_payload_for, open_session
from edge.bundle import Bundle, load_bundle
from edge.errors import BundleError

Box = tuple[int, int, int, int]
DEFAULT_BUNDLE = "face_detector"
STRIDES = (8, 16, 32)


class _Anchors:
    """Anchor points (column, row) and stride of every output row, concatenated over strides."""

    def __init__(self, height: int, width: int) -> None:
        parts = []
        for s in STRIDES:
            rows, cols = np.mgrid[0:height // s, 0:width // s]
            parts.append(np.stack([cols.ravel(), rows.ravel(), np.full(rows.size, s)], axis=1))
        grid = np.concatenate(parts).astype(np.float32)
        self.xy, self.stride = grid[:, :2], grid[:, 2:]


class FrameFit:
    """A frame shrunk (nearest neighbour) into a fixed float32 [1, 3, h, w] input, top-left.

    `__call__(frame)` returns the input buffer (allocated once, overwritten each call); the
    index tables and scratch buffers are remade only when the frame shape changes."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        self.input = np.zeros((1, 3, height, width), np.float32)
        self.scale = 1.0
        self._shape: tuple[int, ...] | None = None

    def _tables(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        self.scale = min(self.width / w, self.height / h, 1.0)
        sh, sw = max(1, int(h * self.scale)), max(1, int(w * self.scale))
        self._rows = np.minimum(((np.arange(sh) + 0.5) / self.scale).astype(np.intp), h - 1)
        self._cols = np.minimum(((np.arange(sw) + 0.5) / self.scale).astype(np.intp), w - 1)
        self._tall = np.empty((sh,) + frame.shape[1:], np.uint8)
        self._small = np.empty((sh, sw) + frame.shape[2:], np.uint8)
        self.input.fill(0.0)
        self._shape = frame.shape

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if frame.shape != self._shape:
            self._tables(frame)
        np.take(frame, self._rows, axis=0, out=self._tall)
        np.take(self._tall, self._cols, axis=1, out=self._small)
        sh, sw = self._small.shape[:2]
        inner = self.input[0, :, :sh, :sw]
        if self._small.ndim == 2:
            inner[...] = self._small
        else:
            np.copyto(inner, self._small.transpose(2, 0, 1))
        return self.input


class CnnDetector:
    """A detector bundle on a backend. `detect(frame) -> [box]`, landmarks in `self.landmarks`.

    A backend the bundle has no payload for (LiteRT: the detector ships no .tflite) gives way
    to the first of `order` that has one."""

    def __init__(self, bundle: str | Bundle = DEFAULT_BUNDLE, backend: str = "auto", threads: int = 1,
                 order: tuple[str, ...] = ("onnxruntime", "numpy"),
                 score_threshold: float | None = None) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        if self.bundle.modality != "detector" or self.bundle.detector is None:
            raise BundleError(f"{self.bundle.path}: not a face detector bundle (modality "
                              f"{self.bundle.modality!r}): pass a detector bundle such as {DEFAULT_BUNDLE!r}")
        spec = self.bundle.detector
        self.score_threshold = spec["score_threshold"] if score_threshold is None else score_threshold
        self.nms_iou = spec["nms_iou"]
        self.side, self.dy = spec["student_box"]["side"], spec["student_box"]["dy"]
        if backend != "auto" and not has_payload_for(self.bundle, backend):
            backend, order = "auto", tuple(b for b in order if b != backend)  # e.g. litert: no .tflite
        self.session = open_session(self.bundle, backend=backend, order=order, threads=threads)
        _, _, height, width = self.bundle.input_shape
        self.fit = FrameFit(height, width)
        self._anchors = _Anchors(height, width)
        self.scores: list[float] = []
        self.raw_boxes: list[Box] = []
        self.landmarks: list[np.ndarray] = []

    def detect(self, frame: np.ndarray) -> list[Box]:
        """Faces in `frame`, best score first; sets `scores` and `landmarks` alike."""
        out = self.session.run({self.bundle.input_name: self.fit(frame)})
        cat = {kind: np.concatenate([out[f"{kind}_{s}"][0] for s in STRIDES])
               for kind in ("cls", "obj", "bbox", "kps")}
        score = np.sqrt(np.clip(cat["cls"][:, 0], 0, 1) * np.clip(cat["obj"][:, 0], 0, 1))
        keep = np.flatnonzero(score > self.score_threshold)
        keep = keep[np.argsort(-score[keep], kind="stable")]
        a_xy, a_s = self._anchors.xy[keep], self._anchors.stride[keep]
        centre = (a_xy + cat["bbox"][keep, :2]) * a_s
        size = np.exp(cat["bbox"][keep, 2:]) * a_s
        boxes = np.concatenate([centre - size / 2, size], axis=1) / self.fit.scale
        kps = ((a_xy[:, None, :] + cat["kps"][keep].reshape(-1, 5, 2)) * a_s[:, None, :]) / self.fit.scale
        chosen = nms(boxes, self.nms_iou)
        self.scores = [float(score[keep[i]]) for i in chosen]
        self.landmarks = [kps[i].astype(np.float32) for i in chosen]
        self.raw_boxes = [_rounded(boxes[i]) for i in chosen]
        return [self.student_box(boxes[i]) for i in chosen]

    def student_box(self, box: np.ndarray) -> Box:
        """The square box the face student expects for a detector box (x, y, w, h)."""
        x, y, w, h = (float(v) for v in box)
        side = self.side * h
        return _rounded((x + w / 2 - side / 2, y + h / 2 + self.dy * h - side / 2, side, side))


def _rounded(box) -> Box:
    return tuple(int(round(v)) for v in box)


def nms(boxes: np.ndarray, iou: float) -> list[int]:
    """Greedy non-maximum suppression of (x, y, w, h) rows sorted best first: kept row indices."""
    kept: list[int] = []
    for i, b in enumerate(boxes):
        if all(_iou(b, boxes[k]) <= iou for k in kept):
            kept.append(i)
    return kept


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(0.0, float(w)) * max(0.0, float(h))
    union = float(a[2] * a[3] + b[2] * b[3]) - inter
    return inter / union if union > 0 else 0.0
