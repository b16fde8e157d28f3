"""Decode-once cache so epochs never re-decode media, decoding with edge's own functions.

In:  list[Item]. Out: waveforms (float32 16 kHz mono [T]) and face crops (uint8 [size, size]
or [frames, size, size]). Decoded audio and video face crops are stored as .npy under
`cache_dir`, keyed by the sha256 of the source file's bytes plus the decode parameters
(sample rate; crop size, frame count, margin), so an edited file or a changed front end
never reads a stale entry. Still images are decoded directly (cheaper than a cache read).

Decoding is the runtime's, one implementation each: audio files through
`edge.audio.read_audio`, a video's audio track through `edge.audio.read_video_audio`
(both resample with edge's polyphase resampler); video frames through
`edge.video.VideoFileReader` (ffmpeg, BGR) and face crops through `edge.face.FaceStage`
with the default CNN detector, the detector and crop the runtime uses. A frame with no
face reuses the last box found in the clip, before any box the centred square. Unreadable
media raise `MediaError` naming the file and the fix.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from distill.data.items import CorpusError, Item
from edge.audio import read_audio, read_video_audio
from edge.errors import MediaError
from edge.face import FaceStage, make_detector
from edge.labels_csv import media_kind
from edge.settings import AUDIO, FACE
from edge.video import VideoFileReader

CACHE_VERSION = 2
"""Bump when decoding changes in a way the key does not capture (2: edge's resampler,
CNN detector and crop)."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cached(cache_dir: str | Path | None, source: str, params: str, make: Callable[[], np.ndarray]) -> np.ndarray:
    """`make()` stored under sha256(source bytes) + params; recomputed when absent or unreadable."""
    if cache_dir is None:
        return make()
    key = hashlib.sha256(f"{file_sha256(source)}|{params}|v{CACHE_VERSION}".encode()).hexdigest()
    entry = Path(cache_dir) / key[:2] / f"{key}.npy"
    if entry.is_file():
        try:
            return np.load(entry, allow_pickle=False)
        except (OSError, ValueError):
            entry.unlink(missing_ok=True)
    value = make()
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_suffix(f".{np.random.randint(1 << 30)}.tmp.npy")
    np.save(tmp, value)
    tmp.replace(entry)
    return value


def load_waveforms(items: Sequence[Item], cache_dir: str | Path | None = "cache") -> list[np.ndarray]:
    """float32 mono 16 kHz waveforms, one per item (items must have audio)."""
    _require(items, "audio", lambda it: it.audio)
    return [cached(cache_dir, it.audio, f"audio|sr={AUDIO.sample_rate}",
                   lambda it=it: decode_audio(it.audio)) for it in items]


def decode_audio(path: str | Path) -> np.ndarray:
    """An audio file, or a video file's audio track, as edge reads it (float32 mono 16 kHz)."""
    if media_kind(path) != "video":
        return read_audio(path)
    wave = read_video_audio(path)
    if wave is None or len(wave) == 0:
        raise MediaError(f"{path}: video has no audio track; give the item a separate audio file")
    return wave


def load_faces(items: Sequence[Item], size: int = FACE.size, cache_dir: str | Path | None = "cache") -> np.ndarray:
    """uint8 [N, size, size]: images gray+resized; videos: face crop of the middle frame."""
    return load_face_clips(items, frames=1, size=size, cache_dir=cache_dir)[:, 0]


def load_face_clips(items: Sequence[Item], frames: int = 4, size: int = FACE.size,
                    cache_dir: str | Path | None = "cache") -> np.ndarray:
    """uint8 [N, frames, size, size]; an image is repeated `frames` times."""
    _require(items, "a face image or video", lambda it: it.image or it.video)
    return np.stack([_face_clip(it, frames, size, cache_dir) for it in items]) if items else \
        np.zeros((0, frames, size, size), np.uint8)


def _face_clip(item: Item, frames: int, size: int, cache_dir: str | Path | None) -> np.ndarray:
    if item.image is not None:
        return np.repeat(image_face(item.image, size)[None], frames, axis=0)
    params = f"faces|frames={frames}|size={size}|margin={FACE.margin}"
    return cached(cache_dir, item.video, params, lambda: video_face_crops(item.video, frames, size))


def image_face(path: str | Path, size: int) -> np.ndarray:
    """A face image: resized whole (cv2 INTER_AREA, as edge's face eval) when it is already a
    tight crop (<= 2x size), else cropped by edge's FaceStage."""
    import cv2
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if gray is None or gray.size == 0:
        raise MediaError(f"{path}: unreadable image; use png/jpg/tiff")
    if max(gray.shape) <= 2 * size:
        return gray if gray.shape == (size, size) else cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)
    return face_crop(_face_stage(1, size), gray)


def video_face_crops(path: str | Path, frames: int, size: int) -> np.ndarray:
    """uint8 [frames, size, size]: face crops of `frames` frames evenly spaced over the clip."""
    stage, crops, filled = _face_stage(frames, size), np.empty((frames, size, size), np.uint8), 0
    with VideoFileReader(path) as reader:
        picks = _evenly_spaced(reader.n_frames, frames)
        for index, (_, frame) in enumerate(reader):
            while filled < frames and picks[filled] == index:
                crops[filled], filled = face_crop(stage, frame), filled + 1
            if filled == frames:
                break
    if filled == 0:
        raise MediaError(f"{path}: no video frames could be decoded; re-encode it as mp4 (H.264)")
    crops[filled:] = crops[filled - 1]  # the container counted more frames than it decoded
    return crops


def _evenly_spaced(n: int, count: int) -> list[int]:
    if count == 1:
        return [n // 2]
    return [int(i) for i in np.linspace(0, n - 1, count + 2)[1:-1].round()]


@lru_cache(maxsize=1)
def _detector():
    """The runtime's default face detector, loaded once per process."""
    return make_detector("cnn")


def _face_stage(frames: int, size: int) -> FaceStage:
    """A FaceStage that detects on every frame it is given and keeps a box for the whole clip."""
    return FaceStage(_detector(), detect_every=1, keep_frames=frames, spec=replace(FACE, size=size))


def face_crop(stage: FaceStage, frame: np.ndarray) -> np.ndarray:
    """The stage's uint8 crop of `frame` (its tracked box, else the centred square)."""
    if stage.process(frame) is None:
        h, w = frame.shape[:2]
        side = min(h, w)
        stage.cropper.crop(frame, ((w - side) // 2, (h - side) // 2, side, side))
    return stage.cropper.small.astype(np.uint8)


def _require(items: Sequence[Item], what: str, get: Callable[[Item], str | None]) -> None:
    bad = [f"{it.corpus}/{it.speaker}" for it in items if get(it) is None]
    if bad:
        raise CorpusError(f"{len(bad)} items have no {what} (first: {bad[:3]}); filter the items by modality first")
