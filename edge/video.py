"""Video sources: a live camera (index, file or stream URL) into a FrameRing, and file replay.

In:  frames decoded by an ffmpeg child process (`capture="ffmpeg"`, the default: edge/ffmpeg.py,
     raw BGR over a pipe, no OpenCV in the process) or by `cv2.VideoCapture`
     (`capture="opencv"`: any size, gray / BGR / BGRA, uint8 or uint16).
Out: `CameraSource` writes 3-channel uint8 BGR frames of the ring's shape (H, W, 3) into a
     `FrameRing` from its own thread, stamped with `time.monotonic()`, at most `fps_cap`
     per second; a frame of another size is letterboxed into that shape (ffmpeg's scale
     and pad filters, or `fit_frame`). `VideoFileReader.frame_at(t, out)` copies the frame
     shown at media time `t` seconds into the caller's (H, W, 3) buffer; iterating it
     yields (t, frame) pairs. With ffmpeg a frame's time is its index / fps (constant rate).

Faults are reported, not raised, once running: `CameraSource.events` receives
"camera lost: ..." when the stream dies and "camera back: ..." when a reconnect (tried every
`reconnect_s`) succeeds; a file source ends at EOF with `alive` False and `finished` True.
Empty (0x0) frames are dropped and counted in `bad_frames`. Opening fails with DeviceError
(cameras) or MediaError (files for replay). cv2 is imported lazily (extra [capture]), only
for `capture="opencv"`.
"""
from __future__ import annotations

import collections
import itertools
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from edge import ffmpeg
from edge.errors import AvemoError, DeviceError, MediaError
from edge.ring import FrameRing

CAPTURES = ("ffmpeg", "opencv")

_STREAM_TIMEOUT_MS = 5000
_STOP_WAIT_S = 1.0  # a read blocked longer than this finishes in the (daemon) thread
_FALLBACK_FPS = 25.0
_EVENTS_KEPT = 64


def _cv2():
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # a dead stream is reported in `events`
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        import cv2
    except ImportError:
        raise AvemoError("video capture needs OpenCV: pip install 'avemo-edge[capture]'") from None
    return cv2


def fit_frame(frame: np.ndarray | None, out: np.ndarray) -> bool:
    """Convert a gray/BGR/BGRA uint8/uint16 frame to BGR uint8 in `out` (H, W, 3), letterboxed.

    Returns False (out untouched) for a missing or empty frame; MediaError for other layouts.
    """
    if frame is None or frame.size == 0:
        return False
    bgr = _to_bgr(_to_uint8(frame))
    if bgr.shape == out.shape:
        out[...] = bgr
    else:
        _letterbox(bgr, out)
    return True


def _to_uint8(frame: np.ndarray) -> np.ndarray:
    if frame.dtype == np.uint8:
        return frame
    if frame.dtype == np.uint16:
        return (frame >> 8).astype(np.uint8)
    raise MediaError(f"video frame of dtype {frame.dtype} is not supported (uint8 or uint16 only)")


def _to_bgr(frame: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    channels = 1 if frame.ndim == 2 else frame.shape[2] if frame.ndim == 3 else 0
    if channels == 3:
        return frame
    if channels == 1:
        return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
    if channels == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    raise MediaError(f"video frame of shape {frame.shape} is not gray, BGR or BGRA")


def _letterbox(bgr: np.ndarray, out: np.ndarray) -> None:
    cv2 = _cv2()
    (h, w), (oh, ow) = bgr.shape[:2], out.shape[:2]
    scale = min(oh / h, ow / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    y0, x0 = (oh - nh) // 2, (ow - nw) // 2
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out.fill(0)
    out[y0:y0 + nh, x0:x0 + nw] = cv2.resize(bgr, (nw, nh), interpolation=interp)


def _camera_spec(spec: int | str) -> int | str:
    if isinstance(spec, str) and spec.strip().isdigit():
        return int(spec)
    return spec


def _open_capture(spec: int | str):
    """An opened cv2.VideoCapture, or None. Stream URLs get open/read timeouts."""
    cv2 = _cv2()
    if isinstance(spec, str) and "://" in spec:
        cap = cv2.VideoCapture(spec, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, _STREAM_TIMEOUT_MS,
                                                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, _STREAM_TIMEOUT_MS])
    else:
        cap = cv2.VideoCapture(spec)
    if cap.isOpened():
        return cap
    cap.release()
    return None


class _OpenCvCapture:
    """cv2.VideoCapture behind the capture interface of `ffmpeg.FfmpegCapture`:
    `read(out) -> (ok, why)` (empty or odd frames skipped and passed to `on_bad`), `release()`.
    A file opened with `realtime` is paced at its own timestamps."""

    def __init__(self, cap, is_file: bool, realtime: bool = False, on_bad=lambda: None) -> None:
        self.cap, self.is_file, self.realtime, self.on_bad = cap, is_file, realtime, on_bad
        self._t0 = time.monotonic()

    def read(self, out: np.ndarray) -> tuple[bool, str]:
        while True:
            try:
                ok, frame = self.cap.read()
            except Exception as e:  # a decoder error must not end the thread
                return False, f"read failed: {e}"
            if not ok:
                return False, "end of file" if self.is_file else "no frame from the stream"
            try:
                fitted = fit_frame(frame, out)
            except MediaError:
                fitted = False
            if fitted:
                if self.realtime:
                    time.sleep(max(0.0, self._t0 + self.position_s() - time.monotonic()))
                return True, ""
            self.on_bad()

    def position_s(self) -> float:
        return self.cap.get(_cv2().CAP_PROP_POS_MSEC) / 1000.0

    def release(self) -> None:
        self.cap.release()


def open_source(spec: int | str, shape: tuple[int, int, int], capture: str = "ffmpeg", realtime: bool = False,
                first: np.ndarray | None = None, on_bad=lambda: None):
    """An opened capture of `spec` (ffmpeg: it already put its first frame into `first`), or None."""
    if capture == "ffmpeg":
        return ffmpeg.open_capture(spec, shape, realtime, first)
    if capture != "opencv":
        raise AvemoError(f"unknown capture {capture!r}: use one of {', '.join(CAPTURES)}")
    cap = _open_capture(spec)
    is_file = isinstance(spec, str) and "://" not in spec
    return None if cap is None else _OpenCvCapture(cap, is_file, realtime, on_bad)


class CameraSource:
    """A camera index, a file or an rtsp/http URL -> FrameRing, in its own thread, decoded by
    an ffmpeg child (`capture="ffmpeg"`) or cv2.VideoCapture (`capture="opencv"`)."""

    def __init__(self, ring: FrameRing, spec: int | str, fps_cap: float = 15.0,
                 reconnect_s: float = 1.0, capture: str = "ffmpeg") -> None:
        if fps_cap <= 0 or reconnect_s <= 0:
            raise ValueError(f"fps_cap and reconnect_s must be > 0, got {fps_cap}, {reconnect_s}")
        self.ring = ring
        self.spec = _camera_spec(spec)
        self.is_file = isinstance(self.spec, str) and "://" not in self.spec
        self.fps_cap = fps_cap
        self.reconnect_s = reconnect_s
        self.capture = capture
        self.frame_shape = ring.shape
        self.alive = False
        self.finished = False
        self.bad_frames = 0
        self.events: collections.deque[str] = collections.deque(maxlen=_EVENTS_KEPT)
        self._frame = np.zeros(ring.shape, np.uint8)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cap = None
        self._pending = False  # an ffmpeg capture read its first frame while opening
        self._next_due = 0.0

    def start(self) -> None:
        """Open the camera and start the reader thread; DeviceError when it cannot be opened."""
        if self.is_file and not Path(self.spec).is_file():
            raise DeviceError(f"camera {self.spec!r}: no such video file")
        if not self._open():
            raise DeviceError(f"camera {self.spec!r} cannot be opened; "
                              "run `avemo-edge info` to list cameras")
        self.alive, self.finished = True, False
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"camera {self.spec}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the reader thread and release the camera (idempotent)."""
        self._stop.set()
        cap = self._cap
        if isinstance(cap, ffmpeg.FfmpegCapture):
            cap.release()  # ends a read blocked on the pipe at once
        if self._thread is not None:
            self._thread.join(timeout=_STOP_WAIT_S)
            self._thread = None
        self.alive = False

    def _open(self) -> bool:
        self._cap = open_source(self.spec, self.frame_shape, self.capture, realtime=self.is_file,
                                first=self._frame, on_bad=self._count_bad)
        self._pending = self._cap is not None and self.capture == "ffmpeg"
        return self._cap is not None

    def _count_bad(self) -> None:
        self.bad_frames += 1

    def _run(self) -> None:
        while not self._stop.is_set() and not self.finished:
            if self._cap is None and not self._reconnect():
                continue
            ok, why = (True, "") if self._pending else self._cap.read(self._frame)
            self._pending = False
            if ok:
                self._deliver()
            else:
                self._lose(why)
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _lose(self, why: str) -> None:
        self._cap.release()
        self._cap = None
        self.alive = False
        if self.is_file:
            self.finished = True
            self.events.append(f"camera finished: {self.spec}: {why}")
        else:
            self.events.append(f"camera lost: {self.spec}: {why}; retrying every {self.reconnect_s:g} s")

    def _reconnect(self) -> bool:
        if self._stop.wait(self.reconnect_s) or not self._open():
            return False
        self.alive = True
        self.events.append(f"camera back: {self.spec}")
        return True

    def _deliver(self) -> None:
        now = time.monotonic()
        period = 1.0 / self.fps_cap
        if now < self._next_due - 0.25 * period:
            return
        self._next_due = max(self._next_due, now - 0.25 * period) + period
        self.ring.write(self._frame, now)

    def child_rss_kb(self, field: str = "VmRSS") -> int | None:
        """RSS (or with "VmHWM" peak RSS) of the ffmpeg decoder child, kB; None with OpenCV or
        while disconnected."""
        cap = self._cap
        return cap.rss_kb(field) if isinstance(cap, ffmpeg.FfmpegCapture) else None


class VideoFileReader:
    """Replay a video file: frames with their media timestamps (seconds from the start)."""

    def __init__(self, path: str | Path, capture: str = "ffmpeg") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise MediaError(f"{self.path}: no such video file")
        if capture not in CAPTURES:
            raise AvemoError(f"unknown capture {capture!r}: use one of {', '.join(CAPTURES)}")
        self.capture = capture
        self.fps, self.n_frames, self.frame_shape = ffmpeg.probe(self.path) if capture == "ffmpeg" \
            else self._probe_opencv()
        self.fps = self.fps if self.fps > 0 and math.isfinite(self.fps) else _FALLBACK_FPS
        self._cap = None
        self._cur = np.zeros(self.frame_shape, np.uint8)
        self._next = np.zeros(self.frame_shape, np.uint8)
        self._cur_t: float = -math.inf
        self._next_t: float | None = None
        self._index = 0
        self._rewind()

    def _probe_opencv(self) -> tuple[float, int, tuple[int, int, int]]:
        cv2, cap = _cv2(), _open_capture(str(self.path))
        if cap is None:
            raise MediaError(f"{self.path}: cannot open video (unsupported format or corrupt file)")
        try:
            fps = cap.get(cv2.CAP_PROP_FPS)
            n_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            ok, first = cap.read()
            if not ok or first is None or first.size == 0:
                raise MediaError(f"{self.path}: contains no readable video frames")
            if n_frames <= 0:
                n_frames = 1 + self._count(cap)
        finally:
            cap.release()
        return fps, n_frames, (first.shape[0], first.shape[1], 3)

    @property
    def duration(self) -> float:
        return self.n_frames / self.fps

    def _open(self):
        cap = ffmpeg.FfmpegCapture(str(self.path), self.frame_shape) if self.capture == "ffmpeg" \
            else open_source(str(self.path), self.frame_shape, "opencv")
        if cap is None:
            raise MediaError(f"{self.path}: cannot open video (unsupported format or corrupt file)")
        return cap

    @staticmethod
    def _count(cap) -> int:
        n = 0
        while cap.grab():
            n += 1
        return n

    def _read(self, out: np.ndarray) -> float | None:
        t = _read_frame(self._cap, out, self._index, self.fps)
        self._index += 1
        return t

    def _rewind(self) -> None:
        self.close()
        self._cap, self._index = self._open(), 0
        self._cur_t = self._read(self._cur)
        self._next_t = self._read(self._next)

    def frame_at(self, t: float, out: np.ndarray) -> bool:
        """Copy the last frame with timestamp <= t into `out`; False before the first or after the last."""
        if t < self._cur_t:
            self._rewind()
            if t < self._cur_t:
                return False
        while self._next_t is not None and self._next_t <= t:
            self._cur, self._next = self._next, self._cur
            self._cur_t, self._next_t = self._next_t, self._read(self._next)
        if self._next_t is None and t >= self._cur_t + 1.0 / self.fps:
            return False
        out[...] = self._cur
        return True

    def __iter__(self) -> Iterator[tuple[float, np.ndarray]]:
        """Yield (timestamp, BGR frame) for every frame from the start; frames are new arrays."""
        cap = self._open()
        try:
            for index in itertools.count():
                frame = np.empty(self.frame_shape, np.uint8)
                t = _read_frame(cap, frame, index, self.fps)
                if t is None:
                    return
                yield t, frame
        finally:
            cap.release()

    def decoder_rss_kb(self, field: str = "VmRSS") -> int | None:
        """RSS (or "VmHWM", peak) of the ffmpeg decoder child, kB; None with OpenCV or when closed."""
        cap = self._cap
        return cap.rss_kb(field) if isinstance(cap, ffmpeg.FfmpegCapture) else None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __enter__(self) -> "VideoFileReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_frame(cap, out: np.ndarray, index: int, fps: float) -> float | None:
    """Decode the next frame into `out`; return its timestamp (s), None at the end."""
    ok, _ = cap.read(out)
    if not ok:
        return None
    if isinstance(cap, _OpenCvCapture):
        ms = cap.position_s() * 1000.0
        if ms > 0 or index == 0:
            return ms / 1000.0
    return index / fps


def list_cameras(max_index: int = 4) -> list[dict]:
    """Camera indices that open: [{index, width, height, fps}]."""
    cv2 = _cv2()
    found = []
    for i in range(max_index):
        if sys.platform.startswith("linux") and not Path(f"/dev/video{i}").exists():
            continue
        cap = _open_capture(i)
        if cap is None:
            continue
        found.append({"index": i, "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                      "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                      "fps": float(cap.get(cv2.CAP_PROP_FPS))})
        cap.release()
    return found
