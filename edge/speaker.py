"""Speaker statistics: running per-band mean and spread of the log-mel of one speaker's voiced audio.

In:  log-mel frames float32 [F, n_mels] (edge.features.LogMel / log_mel), read only.
Out: `SpeakerStats.stats()` -> float32 [1, 2, n_mels]: row 0 the band means, row 1 the band
     standard deviations (sqrt(var + STD_EPS)); the speaker-normalized audio student's second
     input (distill/models/students.py SpeakerNorm: (log-mel - mean) / std, per band). The
     array is owned here and overwritten by the next `stats()` call.

The accumulators are fixed arrays (sum and sum of squares per band, float64, and a frame count),
so memory is bounded however long the run and `add`/`stats` allocate nothing. `moments` and
`band_stats` are the one implementation of the statistics: training builds a speaker's
statistics from per-utterance moments with them (distill/distillation.py), the runtime with
`SpeakerStats`, `avemo-edge eval` scores files in the order a live device would hear them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from edge.features import log_mel
from edge.settings import AUDIO

STD_EPS = 1e-2
"""Added to each band's variance before the square root (a silent band has zero spread)."""


def moments(logmel: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float64 [2, n_mels]: per-band sum and sum of squares of `logmel` [F, n_mels] (into `out`)."""
    out = np.empty((2, logmel.shape[1])) if out is None else out
    np.sum(logmel, axis=0, out=out[0])
    np.einsum("fm,fm->m", logmel, logmel, out=out[1])
    return out


def band_stats(sums: np.ndarray, count: np.ndarray | float, out: np.ndarray | None = None) -> np.ndarray:
    """float32 [..., 2, n_mels] (band mean, band std) from `moments` summed over `count` frames
    (`sums` [..., 2, n_mels] with `count` [...]: one speaker, or a batch of them)."""
    count = np.asarray(count, np.float64)[..., None]
    out = np.empty(sums.shape, np.float32) if out is None else out
    mean, spread = out[..., 0, :], out[..., 1, :]
    np.divide(sums[..., 0, :], count, out=mean, casting="same_kind")
    np.divide(sums[..., 1, :], count, out=spread, casting="same_kind")
    np.subtract(spread, np.square(mean, out=mean), out=spread)  # var = E[x^2] - mean^2, in place:
    np.divide(sums[..., 0, :], count, out=mean, casting="same_kind")  # the mean again
    np.maximum(spread, 0.0, out=spread)
    np.add(spread, STD_EPS, out=spread)
    np.sqrt(spread, out=spread)
    return out


class SpeakerStats:
    """Running statistics of one speaker's log-mel (module docstring); `reset()` forgets them."""

    def __init__(self, n_mels: int = AUDIO.n_mels) -> None:
        self.sums = np.zeros((2, n_mels))
        self.frames = 0
        self._add = np.zeros((2, n_mels))
        self._stats = np.zeros((1, 2, n_mels), np.float32)

    def reset(self) -> None:
        self.sums.fill(0.0)
        self.frames = 0

    def add(self, logmel: np.ndarray) -> None:
        """Add the frames of `logmel` [F, n_mels] (F may be 0)."""
        if len(logmel):
            self.sums += moments(logmel, self._add)
            self.frames += len(logmel)

    def stats(self) -> np.ndarray:
        """[1, 2, n_mels] (mean, std) of every frame added since the last reset (needs one)."""
        band_stats(self.sums, self.frames, self._stats[0])
        return self._stats


def causal_order(speakers: Sequence[str], seed: int = 0) -> list[int]:
    """Indices of `speakers` grouped by speaker (in order of first appearance), each speaker's
    items in a fixed shuffled order (seeded): the order in which `avemo-edge eval` and the
    cross-validation play a speaker's files to a model that adapts to what it has heard."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for i, speaker in enumerate(speakers):
        groups.setdefault(speaker, []).append(i)
    return [group[j] for group in groups.values() for j in rng.permutation(len(group))]


def window_stats(wave: np.ndarray) -> np.ndarray:
    """The statistics of one waveform's own log-mel, float32 [1, 2, n_mels] (a new array): what
    a model without adaptation gets (calibration, checks; the runtime keeps its own buffers)."""
    logmel = log_mel(wave)
    return band_stats(moments(logmel), len(logmel))[None]
