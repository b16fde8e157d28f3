"""Speaker statistics: running per-band mean and spread of the log-mel of one speaker's voiced audio.

In:  log-mel frames [F, n_mels], float32 or float64 (edge.features.log_mel / LogMel), read only.
Out: `SpeakerStats.stats()` -> float32 [1, 2, n_mels]: row 0 the band means, row 1 the band
     standard deviations (sqrt(var + STD_EPS)); the speaker-normalized audio student's second
     input (distill/models/students.py SpeakerNorm: (log-mel - mean) / std, per band). The
     array is owned here and overwritten by the next `stats()` call.

The accumulators are fixed arrays (sum and sum of squares per band, float64, and a frame count),
so memory is bounded however long the run and `add`/`stats` allocate nothing. `moments`,
`band_stats` and `SpeakerStats` are the one implementation of the statistics: training and
the cross-validation build a speaker's statistics from per-utterance moments with them
(distill/distillation.py), the runtime (`Adaptation`) from the voiced hops it hears, and
`causal_order` is the order both score a speaker's files in (as a live device hears them).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from edge.features import LogMel, log_mel
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
            self.add_moments(moments(logmel, self._add), len(logmel))

    def add_moments(self, sums: np.ndarray, frames: int) -> None:
        """Add `moments` [2, n_mels] of `frames` frames (an utterance's, computed elsewhere)."""
        self.sums += sums
        self.frames += frames

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


class Adaptation:
    """The audio stage's speaker statistics for a model with a statistics input.

    `update(window, until, t, voiced)` runs every hop: on a voiced hop it adds the log-mel
    frames of the audio new since the previous hop (not the whole window again) to the running
    `SpeakerStats` and returns what the model gets: the speaker's statistics once `min_s`
    seconds of voiced audio are in, before that (and always when `enabled` is False) the
    window's own. A voiced hop more than `reset_s` after the previous voiced one starts a new
    speaker (`reset()` does it on demand). A hop whose sample index `until` or time `t` goes
    back starts a new recording of the same speaker (`avemo-edge eval` plays a speaker's files
    one after the other). Every buffer is allocated here; the returned array is owned here.
    """

    def __init__(self, window_samples: int, min_s: float, reset_s: float, enabled: bool = True) -> None:
        self.enabled, self.reset_s = enabled, reset_s
        self.min_frames = min_s * AUDIO.sample_rate / AUDIO.hop
        self.logmel = LogMel(window_samples)
        self.speaker = SpeakerStats()
        self._own = np.zeros((1, 2, AUDIO.n_mels), np.float32)
        self._own_sums = np.zeros((2, AUDIO.n_mels))
        self._until: int | None = None
        self._voiced_t: float | None = None

    def reset(self) -> None:
        """Forget the speaker (a new person is talking)."""
        self.speaker.reset()
        self._voiced_t = None

    def update(self, window: np.ndarray, until: int, t: float, voiced: bool) -> np.ndarray | None:
        """`window`: float32 [T] the model reads on this hop, ending at sample `until`, time `t`
        (seconds). Returns the statistics [1, 2, n_mels] on a voiced hop, else None."""
        new = until - self._until if self._until is not None and until >= self._until else len(window)
        self._until = until
        if not voiced:
            return None
        logmel = self.logmel(window)
        if self.enabled:
            if self._voiced_t is not None and t - self._voiced_t > self.reset_s:
                self.speaker.reset()
            self._voiced_t = t
            self.speaker.add(logmel[max(0, len(logmel) - new // AUDIO.hop):])
            if self.speaker.frames >= self.min_frames:
                return self.speaker.stats()
        band_stats(moments(logmel, self._own_sums), len(logmel), self._own[0])
        return self._own
