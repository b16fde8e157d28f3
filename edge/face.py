"""Face stage: find the largest face, track its box, crop it into the student's input.

In:  a BGR (or gray) uint8 frame [H, W, 3] (from `FrameRing.read_newest`).
Out: `FaceStage.process(frame)` -> the box (x, y, w, h) in frame pixels, or None when no
     face is in view; the crop is written into `FaceStage.input`, a float32
     [1, 1, S, S] buffer allocated once and overwritten on every call. `FaceStage.landmarks`
     is the box's five landmarks (float32 [5, 2], frame pixels) when the detector gives
     them (the CNN detector does, Haar does not), else None.

The detector runs every `detect_every` frames; between runs the last box is reused, and a
box not re-detected for `keep_frames` frames is dropped (the face left the view).
Detectors sit behind `FaceDetector` (`make_detector`): "cnn", the default, is the shipped
`face_detector` bundle (edge/detector.py) on the pipeline's backends; "haar" is OpenCV's
Haar cascade (cv2 imported lazily: `pip install avemo-edge[capture]`, opencv <5).
The crop (gray conversion and resampling, as cv2.cvtColor + cv2.resize INTER_AREA)
is numpy; its resampling matrix is remade only when the crop's size changes. What the crop
is (size, margin, standardization: `FaceInput`; eye levelling) is the face bundle's
(`input.face`, `input.alignment`): the pipeline builds its stage from the bundle.
Eye levelling (`level_eyes`, when the detector gives landmarks): the crop square is turned
about its centre so that the line between the eyes is horizontal (bilinear sampling of the
gray frame, edge pixels repeated, as cv2.warpAffine INTER_LINEAR + BORDER_REPLICATE), then
shrunk as above.
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


DETECTORS = ("cnn", "haar")
"""Detector names `make_detector` takes (besides a detector bundle path)."""


class FaceDetector(Protocol):
    def detect(self, frame: np.ndarray) -> list[Box]:
        """All faces in a BGR or gray uint8 image, as (x, y, w, h) boxes."""


def make_detector(name: str = "cnn", backend: str = "auto", threads: int = 1,
                  order: tuple[str, ...] = ("onnxruntime", "numpy")) -> FaceDetector:
    """"cnn" (the shipped detector bundle), "haar" (OpenCV), or the path of a detector bundle."""
    if name == "haar":
        return HaarDetector()
    from edge.detector import DEFAULT_BUNDLE, CnnDetector
    return CnnDetector(DEFAULT_BUNDLE if name == "cnn" else name, backend=backend, threads=threads, order=order)


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

    def detect(self, frame: np.ndarray) -> list[Box]:
        cv2 = _cv2()
        gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
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


def area_matrix(src: int, dst: int) -> np.ndarray:
    """float32 [dst, src] resampling weights of cv2.resize INTER_AREA: box averages when
    shrinking; when enlarging, OpenCV's sharp linear blend (a pixel gets weight from its
    right neighbour only past the edge of its box)."""
    m = np.zeros((dst, src), np.float64)
    if src >= dst:
        edges = np.arange(dst + 1) * (src / dst)
        for i in range(dst):
            lo, hi = edges[i], edges[i + 1]
            j = np.arange(int(lo), min(src, int(np.ceil(hi))))
            m[i, j] = np.minimum(j + 1, hi) - np.maximum(j, lo)
        m /= src / dst
    else:
        i = np.arange(dst)
        j0 = np.floor(i * (src / dst)).astype(int)
        f = (i + 1) - (j0 + 1) * (dst / src)
        f = np.where(f <= 0, 0.0, f - np.floor(f))
        np.add.at(m, (i, j0), 1 - f)
        np.add.at(m, (i, np.minimum(j0 + 1, src - 1)), f)
    return m.astype(np.float32)


def eye_angle(landmarks: np.ndarray) -> float:
    """Radians the eye line turns from horizontal (image coordinates, y down): landmarks [5, 2]
    with the right eye (on the image's left) first, the left eye second, as the CNN detector's."""
    (rx, ry), (lx, ly) = landmarks[0], landmarks[1]
    return float(np.arctan2(ly - ry, lx - rx))


class FaceCropper:
    """Crop + gray + area resize + per-crop standardization into a preallocated [1, 1, S, S] buffer.

    `small` (float32 [S, S], allocated once, overwritten by each `crop`) keeps the last crop
    before standardization: integer gray values 0..255, what training caches as uint8.
    With `level_eyes`, `crop(frame, box, landmarks)` turns the square so the eyes are level."""

    GRAY = (0.114, 0.587, 0.299)
    """B, G, R weights of the gray conversion (ITU-R BT.601, as cv2.COLOR_BGR2GRAY)."""

    def __init__(self, spec: FaceInput = FACE, level_eyes: bool = False) -> None:
        self.spec, self.level_eyes = spec, level_eyes
        self.input = np.zeros((1, 1, spec.size, spec.size), np.float32)
        self.small = np.zeros((spec.size, spec.size), np.float32)
        self._side = 0

    def _resize_buffers(self, side: int) -> None:
        self._side = side
        self._matrix = area_matrix(side, self.spec.size)
        self._gray = np.empty((side, side), np.float32)
        self._channel = np.empty((side, side), np.float32)
        self._rows = np.empty((self.spec.size, side), np.float32)
        if self.level_eyes:
            self._turn = _Turn(side)
            reach = 2 * self._turn.reach + 1
            self._region = np.zeros((reach, reach), np.float32)  # zeroed: _Turn may read past the image
            self._region_channel = np.empty((reach, reach), np.float32)

    def crop(self, frame: np.ndarray, box: Box, landmarks: np.ndarray | None = None) -> np.ndarray:
        """The square crop around `box` (margin from the spec) of a BGR or gray frame, standardized;
        turned to level the eyes when the cropper levels them and `landmarks` are given."""
        x, y, w, h = square_crop_box(box, frame.shape, self.spec.margin)
        if w != self._side:
            self._resize_buffers(w)
        if self.level_eyes and landmarks is not None:
            self._levelled(frame, x + w / 2.0, y + h / 2.0, eye_angle(landmarks))
        else:
            self._to_gray(frame[y:y + h, x:x + w], self._gray, self._channel)
        np.matmul(self._matrix, self._gray, out=self._rows)
        np.matmul(self._rows, self._matrix.T, out=self.small)
        np.rint(self.small, out=self.small)  # cv2 gives uint8: the same rounding
        return self.standardize(self.small)

    def _levelled(self, frame: np.ndarray, cx: float, cy: float, angle: float) -> None:
        """Gray of the frame around the crop (as far as a turned corner reaches, clipped to the
        frame), then the turned square sampled from it into `_gray`."""
        reach = self._turn.reach
        x0, y0 = max(0, int(cx) - reach), max(0, int(cy) - reach)
        x1, y1 = min(frame.shape[1], int(cx) + reach + 1), min(frame.shape[0], int(cy) + reach + 1)
        region = self._region[:y1 - y0, :x1 - x0]
        self._to_gray(frame[y0:y1, x0:x1], region, self._region_channel[:y1 - y0, :x1 - x0])
        self._turn(self._region, region.shape, cx - x0, cy - y0, angle, self._gray)

    def _to_gray(self, region: np.ndarray, gray: np.ndarray, channel: np.ndarray) -> None:
        """BGR (or gray) uint8 `region` -> rounded gray levels in `gray` (`channel`: scratch, same shape)."""
        if region.ndim == 2:
            np.copyto(gray, region)
            return
        np.copyto(gray, region[..., 0])  # a ufunc on uint8 into float32 would buffer (allocate)
        gray *= np.float32(self.GRAY[0])
        for c in (1, 2):
            np.copyto(channel, region[..., c])
            channel *= np.float32(self.GRAY[c])
            gray += channel
        np.rint(gray, out=gray)

    def standardize(self, gray_crop: np.ndarray) -> np.ndarray:
        out = self.input[0, 0]
        out[...] = gray_crop
        mean = float(out.mean())
        std = max(float(out.std()), self.spec.std_floor)
        out -= mean
        out /= std
        return self.input


class _Turn:
    """Bilinear samples of a gray image on a square grid of `side` pixels turned by an angle
    about a centre, into a [side, side] float32 buffer, ROWS grid rows at a time (its buffers
    hold ROWS rows: ~50 bytes per grid pixel at once would be 4.5 MB for a 300 px square).
    `reach`: how far from the centre a sample's neighbours can be."""

    ROWS = 32

    def __init__(self, side: int) -> None:
        self.offsets = np.arange(side, dtype=np.float32) + 0.5 - side / 2.0  # pixel centres from the square's centre
        self.reach = int(np.ceil(side / np.sqrt(2.0))) + 2
        shape = (min(side, self.ROWS), side)
        self.sx, self.sy, self.fx, self.fy, self.gx, self.gy, self.tmp, self.corner = (
            np.empty(shape, np.float32) for _ in range(8))
        self.ix, self.iy, self.idx = (np.empty(shape, np.intp) for _ in range(3))

    def __call__(self, gray: np.ndarray, size: tuple[int, int], cx: float, cy: float, angle: float,
                 out: np.ndarray) -> None:
        """`gray`: a C-contiguous buffer whose top-left `size` (rows, columns) is the image; edge
        pixels repeat outside it."""
        c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        flat, u = gray.reshape(-1), self.offsets
        for r0 in range(0, len(u), self.ROWS):
            v = u[r0:r0 + self.ROWS, None]
            self._rows(flat, gray.shape[1], size, (cx, cy, c, s), v, out[r0:r0 + len(v)])
        np.rint(out, out=out)  # cv2.warpAffine gives uint8: the same rounding

    def _rows(self, flat: np.ndarray, stride: int, size: tuple[int, int], turn: tuple, v: np.ndarray,
              out: np.ndarray) -> None:
        """Grid rows v (a column of offsets) into `out`: source x = cx + u cos - v sin, y = cy + u sin + v cos."""
        cx, cy, c, s = turn
        n, (h, w), u = len(v), size, self.offsets
        self._source(self.sx[:n], u, c, v, -s, cx - 0.5, w - 1)
        self._source(self.sy[:n], u, s, v, c, cy - 0.5, h - 1)
        for src, whole, frac, rest in ((self.sx, self.ix, self.fx, self.gx), (self.sy, self.iy, self.fy, self.gy)):
            np.floor(src[:n], out=frac[:n])
            np.copyto(whole[:n], frac[:n], casting="unsafe")
            np.subtract(src[:n], frac[:n], out=frac[:n])  # weight of the next pixel
            np.subtract(1.0, frac[:n], out=rest[:n])  # weight of this one
        base, idx, corner = self.iy[:n], self.idx[:n], self.corner[:n]
        base *= stride
        base += self.ix[:n]  # the top-left neighbour's index
        out.fill(0.0)
        for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
            # past the image's last row or column the weight (fy or fx) is exactly 0: whatever
            # finite value sits there in the buffer (zeroed at allocation) adds nothing
            np.add(base, dy * stride + dx, out=idx)
            np.take(flat, idx, out=corner, mode="clip")  # "raise" would buffer (allocate)
            corner *= (self.fx if dx else self.gx)[:n]
            corner *= (self.fy if dy else self.gy)[:n]
            out += corner

    def _source(self, dst: np.ndarray, u: np.ndarray, a: np.float32, v: np.ndarray, b: np.float32,
                shift: float, limit: int) -> None:
        """dst = u * a + v * b + shift, clipped to [0, limit] (edge pixels repeat)."""
        tmp = self.tmp[:len(dst)]
        np.multiply(u, a, out=dst)
        np.multiply(v, b, out=tmp)
        dst += tmp
        dst += np.float32(shift)
        np.clip(dst, 0, limit, out=dst)


def standardize_crops(crops: np.ndarray, spec: FaceInput = FACE) -> np.ndarray:
    """Batch form of `FaceCropper.standardize` for training/eval: uint8 [N, S, S] -> float32."""
    x = crops.astype(np.float32)
    mean = x.mean(axis=(-2, -1), keepdims=True)
    std = np.maximum(x.std(axis=(-2, -1), keepdims=True), spec.std_floor)
    return (x - mean) / std


class FaceStage:
    """Detector every Nth frame + box reuse + crop. One instance per stream."""

    def __init__(self, detector: FaceDetector | None = None, detect_every: int = 3,
                 keep_frames: int | None = None, spec: FaceInput = FACE, level_eyes: bool = False) -> None:
        self.detector = detector if detector is not None else make_detector()
        self.detect_every = detect_every
        self.keep_frames = keep_frames if keep_frames is not None else 2 * detect_every
        self.cropper = FaceCropper(spec, level_eyes)
        self.input = self.cropper.input
        self.box: Box | None = None
        self.landmarks: np.ndarray | None = None
        self._frames = 0
        self._since_seen = 0

    def _detect(self, frame: np.ndarray) -> None:
        boxes = self.detector.detect(frame)
        found = largest(boxes)
        if found is not None:
            self.box, self._since_seen = found, 0
            marks = getattr(self.detector, "landmarks", None)
            self.landmarks = marks[boxes.index(found)] if marks else None

    def process(self, frame: np.ndarray) -> Box | None:
        """Update the tracked box from this frame and crop it into `self.input`."""
        if self._frames % self.detect_every == 0:
            self._detect(frame)
        self._frames += 1
        self._since_seen += 1
        if self.box is not None and self._since_seen > self.keep_frames:
            self.box = self.landmarks = None
        if self.box is None:
            return None
        self.cropper.crop(frame, self.box, self.landmarks)
        return self.box
