"""Face stage: find the largest face, track its box, crop it into the student's input.

In:  a BGR uint8 frame [H, W, 3] (from `FrameRing.read_newest`).
Out: `FaceStage.process(frame)` -> the box (x, y, w, h) in frame pixels, or None when no
     face is in view; the crop is written into `FaceStage.input`, a float32
     [1, 1, S, S] buffer allocated once and overwritten on every call.

The detector runs every `detect_every` frames; between runs the last box is reused, and a
box not re-detected for `keep_frames` frames is dropped (the face left the view).
Detectors sit behind `FaceDetector`; the default is OpenCV's Haar cascade (opencv <5 ships
it). cv2 is imported lazily: `pip install avemo-edge[capture]`.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from edge.errors import AvemoError
from edge.settings import FACE, FaceInput

Box = tuple[int, int, int, int]


def _cv2():
    try:
        import cv2
    except ImportError:
        raise AvemoError("face detection needs OpenCV: pip install 'avemo-edge[capture]'") from None
    return cv2


class FaceDetector(Protocol):
    def detect(self, gray: np.ndarray) -> list[Box]:
        """All faces in a gray uint8 image, as (x, y, w, h) boxes."""


class HaarDetector:
    """OpenCV's frontal-face Haar cascade, run on a copy downscaled to `work_width` pixels."""

    def __init__(self, work_width: int = 320, min_face_fraction: float = 0.08) -> None:
        cv2 = _cv2()
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise AvemoError(f"{path}: Haar cascade missing; install opencv-python-headless<5 "
                             "(5.x dropped the cascades)")
        self.work_width = work_width
        self.min_face_fraction = min_face_fraction
        self._small: np.ndarray | None = None

    def detect(self, gray: np.ndarray) -> list[Box]:
        cv2 = _cv2()
        scale = min(1.0, self.work_width / gray.shape[1])
        size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
        if self._small is None or self._small.shape != (size[1], size[0]):
            self._small = np.empty((size[1], size[0]), np.uint8)
        small = cv2.resize(gray, size, dst=self._small, interpolation=cv2.INTER_AREA)
        min_side = max(12, int(self.min_face_fraction * min(size)))
        found = self.cascade.detectMultiScale(small, scaleFactor=1.15, minNeighbors=5,
                                              minSize=(min_side, min_side))
        return [tuple(int(round(v / scale)) for v in box) for box in found]


def largest(boxes: list[Box]) -> Box | None:
    return max(boxes, key=lambda b: b[2] * b[3]) if boxes else None


def square_crop_box(box: Box, frame_shape: tuple[int, ...], margin: float) -> Box:
    """The box grown by `margin` per side, made square, clipped to the frame."""
    x, y, w, h = box
    side = int(round(max(w, h) * (1.0 + 2.0 * margin)))
    side = max(1, min(side, frame_shape[0], frame_shape[1]))
    cx, cy = x + w / 2.0, y + h / 2.0
    x0 = int(round(min(max(cx - side / 2.0, 0), frame_shape[1] - side)))
    y0 = int(round(min(max(cy - side / 2.0, 0), frame_shape[0] - side)))
    return x0, y0, side, side


class FaceCropper:
    """Crop + resize + per-crop standardization into a preallocated [1, 1, S, S] buffer."""

    def __init__(self, spec: FaceInput = FACE) -> None:
        self.spec = spec
        self.input = np.zeros((1, 1, spec.size, spec.size), np.float32)
        self._gray_crop = np.empty((spec.size, spec.size), np.uint8)

    def crop(self, gray: np.ndarray, box: Box) -> np.ndarray:
        cv2 = _cv2()
        x, y, w, h = square_crop_box(box, gray.shape, self.spec.margin)
        cv2.resize(gray[y:y + h, x:x + w], (self.spec.size, self.spec.size),
                   dst=self._gray_crop, interpolation=cv2.INTER_AREA)
        return self.standardize(self._gray_crop)

    def standardize(self, gray_crop: np.ndarray) -> np.ndarray:
        out = self.input[0, 0]
        out[...] = gray_crop
        mean = float(out.mean())
        std = max(float(out.std()), self.spec.std_floor)
        out -= mean
        out /= std
        return self.input


def standardize_crops(crops: np.ndarray, spec: FaceInput = FACE) -> np.ndarray:
    """Batch form of `FaceCropper.standardize` for training/eval: uint8 [N, S, S] -> float32."""
    x = crops.astype(np.float32)
    mean = x.mean(axis=(-2, -1), keepdims=True)
    std = np.maximum(x.std(axis=(-2, -1), keepdims=True), spec.std_floor)
    return (x - mean) / std


class FaceStage:
    """Detector every Nth frame + box reuse + crop. One instance per stream."""

    def __init__(self, detector: FaceDetector | None = None, detect_every: int = 3,
                 keep_frames: int | None = None, spec: FaceInput = FACE) -> None:
        self.detector = detector if detector is not None else HaarDetector()
        self.detect_every = detect_every
        self.keep_frames = keep_frames if keep_frames is not None else 2 * detect_every
        self.cropper = FaceCropper(spec)
        self.input = self.cropper.input
        self.box: Box | None = None
        self._frames = 0
        self._since_seen = 0
        self._gray: np.ndarray | None = None

    def _to_gray(self, frame: np.ndarray) -> np.ndarray:
        if frame.ndim == 2:
            return frame
        if self._gray is None or self._gray.shape != frame.shape[:2]:
            self._gray = np.empty(frame.shape[:2], np.uint8)
        cv2 = _cv2()
        return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY, dst=self._gray)

    def process(self, frame: np.ndarray) -> Box | None:
        """Update the tracked box from this frame and crop it into `self.input`."""
        gray = self._to_gray(frame)
        if self._frames % self.detect_every == 0:
            found = largest(self.detector.detect(gray))
            if found is not None:
                self.box, self._since_seen = found, 0
        self._frames += 1
        self._since_seen += 1
        if self.box is not None and self._since_seen > self.keep_frames:
            self.box = None
        if self.box is None:
            return None
        self.cropper.crop(gray, self.box)
        return self.box
