"""Decode-once cache so epochs never re-decode media.

In:  list[Item]. Out: waveforms (float32 16 kHz mono [T]) and face crops (uint8 [size, size]
or [frames, size, size]). Decoded audio and video face crops are stored as .npy under
`cache_dir`, keyed by the sha256 of the source file's bytes plus the decode parameters
(sample rate; crop size, frame count, margin), so an edited file or a changed front end
never reads a stale entry. Still images are decoded directly (cheaper than a cache read).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from distill.data.items import CorpusError, Item
from distill.data.media import crop_square, decode_audio, face_box, read_gray, resize_square, video_face_crops
from edge.settings import AUDIO, FACE

CACHE_VERSION = 1
"""Bump when decoding changes in a way the key does not capture."""


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


def load_waveforms(items: Sequence[Item], cache_dir: str | Path | None = "cache",
                   sample_rate: int = AUDIO.sample_rate) -> list[np.ndarray]:
    """float32 mono waveforms at `sample_rate`, one per item (items must have audio)."""
    _require(items, "audio", lambda it: it.audio)
    return [cached(cache_dir, it.audio, f"audio|sr={sample_rate}",
                   lambda it=it: decode_audio(it.audio, sample_rate)) for it in items]


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


def image_face(path: str, size: int) -> np.ndarray:
    """A face image: used as is when it is already a tight crop (<= 2x size), else Haar-cropped."""
    gray = read_gray(path)
    if max(gray.shape) <= 2 * size:
        return resize_square(gray, size)
    return crop_square(gray, face_box(gray), size)


def _require(items: Sequence[Item], what: str, get: Callable[[Item], str | None]) -> None:
    bad = [f"{it.corpus}/{it.speaker}" for it in items if get(it) is None]
    if bad:
        raise CorpusError(f"{len(bad)} items have no {what} (first: {bad[:3]}); filter the items by modality first")
