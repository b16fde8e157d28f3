"""Decoded splits and batches: items -> in-memory arrays -> torch batches.

In:  list[Item] (any mix of audio, face images, videos). Out: `TeacherData` (waveforms
float32 16 kHz, face clips uint8 [T, S, S] — one frame for a still image, `frames` for a
video —, label indices, -1 when unlabeled or unknown to the model) and `collate` batches
{wave [B, n] float32, faces [B, T, S, S] float32 0..255, y [B] int64}. Training crops
audio at random offsets, evaluation at the centre; shorter clips are zero-padded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from distill.data.cache import load_face_clips, load_waveforms
from distill.data.items import Item

Unit = tuple[int | None, int | None]
"""One training row: (index of its audio item, index of its face item) in a TeacherData."""


@dataclass
class TeacherData:
    """Decoded items of one split: waveforms, face clips [T, S, S] uint8, label index (-1: none)."""

    items: list[Item]
    waves: list[np.ndarray | None]
    faces: list[np.ndarray | None]
    y: np.ndarray


def prepare(items: Sequence[Item], labels: Sequence[str], frames: int, size: int, cache_dir: str | None) -> TeacherData:
    """Decode every item once (through the cache)."""
    index = {label: i for i, label in enumerate(labels)}
    waves: list[np.ndarray | None] = [None] * len(items)
    faces: list[np.ndarray | None] = [None] * len(items)
    audio = [i for i, it in enumerate(items) if it.audio]
    for i, w in zip(audio, load_waveforms([items[i] for i in audio], cache_dir=cache_dir)):
        waves[i] = w
    for kind, t in (("image", 1), ("video", frames)):
        idx = [i for i, it in enumerate(items) if getattr(it, kind) and (kind == "video" or not it.video)]
        for i, clip in zip(idx, load_face_clips([items[i] for i in idx], frames=t, size=size, cache_dir=cache_dir)):
            faces[i] = clip
    y = np.array([index.get(it.label, -1) if it.label else -1 for it in items], dtype=np.int64)
    return TeacherData(list(items), waves, faces, y)


def crop(wave: np.ndarray, n: int, rng: np.random.Generator | None) -> np.ndarray:
    """A window of n samples: random offset with `rng`, centred without; zero-padded if short."""
    if len(wave) < n:
        return np.pad(wave, (0, n - len(wave)))
    start = int(rng.integers(0, len(wave) - n + 1)) if rng is not None else (len(wave) - n) // 2
    return wave[start:start + n]


def collate(data: TeacherData, units: Sequence[Unit], n: int, rng: np.random.Generator | None) -> dict:
    """Tensors for a batch of units: wave [B, n], faces [B, T, S, S] float, y [B]."""
    a_idx, v_idx = [u[0] for u in units], [u[1] for u in units]
    batch: dict = {"y": torch.from_numpy(data.y[[a if a is not None else v for a, v in units]])}
    if a_idx[0] is not None:
        batch["wave"] = torch.from_numpy(np.stack([crop(data.waves[i], n, rng) for i in a_idx]))
    if v_idx[0] is not None:
        clips = [data.faces[i] for i in v_idx]
        t = max(len(c) for c in clips)
        batch["faces"] = torch.from_numpy(np.stack([np.repeat(c, t // len(c), axis=0) for c in clips]).astype(np.float32))
    return batch
