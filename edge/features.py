"""Audio features: the reference log-mel front end and the energy VAD gate.

In:  float32 mono waveform at `AUDIO.sample_rate`, values in [-1, 1].
Out: `log_mel` -> float32 [n_frames, n_mels]; `VoiceGate.voiced` -> bool.

The audio student computes the same log-mel inside its graph (conv/matmul layers with fixed
weights, built by `distill/models/frontend.py`); this numpy version is the reference it is
tested against. Frames are two adjacent hops (n_fft == 2 * hop), so a window of T samples
gives T // hop - 1 frames and framing is a reshape, not a gather.
"""
from __future__ import annotations

import numpy as np

from edge.settings import AUDIO, AudioFrontEnd


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(fe: AudioFrontEnd = AUDIO) -> np.ndarray:
    """Triangular HTK mel filters, float32 [n_fft // 2 + 1, n_mels]."""
    n_bins = fe.n_fft // 2 + 1
    bin_hz = np.arange(n_bins) * fe.sample_rate / fe.n_fft
    edges = mel_to_hz(np.linspace(hz_to_mel(fe.fmin), hz_to_mel(fe.fmax), fe.n_mels + 2))
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    up = (bin_hz[:, None] - lo) / (mid - lo)
    down = (hi - bin_hz[:, None]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window, float32 [n]."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


def window_samples(seconds: float, fe: AudioFrontEnd = AUDIO) -> int:
    """Samples in a window of `seconds`, a whole number of hops (the one rounding used by
    training crops, the runtime window and the scorer)."""
    return int(round(seconds * fe.sample_rate)) // fe.hop * fe.hop


def n_frames(n_samples: int, fe: AudioFrontEnd = AUDIO) -> int:
    return max(0, n_samples // fe.hop - 1)


def frames(wave: np.ndarray, fe: AudioFrontEnd = AUDIO) -> np.ndarray:
    """Overlapping frames [n_frames, n_fft] built from adjacent hops (a view-free copy)."""
    hops = wave[: (len(wave) // fe.hop) * fe.hop].reshape(-1, fe.hop)
    return np.concatenate([hops[:-1], hops[1:]], axis=1)


def log_mel(wave: np.ndarray, fe: AudioFrontEnd = AUDIO) -> np.ndarray:
    """Reference log-mel spectrogram, float32 [n_frames, n_mels]."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"log_mel expects a mono 1-D waveform, got shape {wave.shape}")
    if n_frames(len(wave), fe) < 1:
        raise ValueError(f"log_mel needs at least {2 * fe.hop} samples, got {len(wave)}")
    spec = np.fft.rfft(frames(wave, fe) * hann_window(fe.n_fft), axis=1)
    power = (spec.real**2 + spec.imag**2).astype(np.float32)
    return np.log(power @ mel_filterbank(fe) + fe.log_floor).astype(np.float32)


class VoiceGate:
    """Energy voice-activity gate over the latest window.

    A window counts as voiced when at least `min_voiced_fraction` of its hops are louder
    than `threshold_dbfs`. Works in place on the caller's window: no allocation per call.
    """

    def __init__(self, window_samples: int, threshold_dbfs: float = -45.0,
                 min_voiced_fraction: float = 0.1, fe: AudioFrontEnd = AUDIO) -> None:
        self.hop = fe.hop
        self.n_hops = window_samples // fe.hop
        self.threshold = float(10.0 ** (threshold_dbfs / 10.0))  # mean-square power
        self.min_voiced = max(1, int(np.ceil(min_voiced_fraction * self.n_hops)))
        self._sq = np.empty((self.n_hops, fe.hop), np.float32)
        self._power = np.empty(self.n_hops, np.float32)
        self.level_dbfs = -120.0

    def voiced(self, window: np.ndarray) -> bool:
        hops = window[: self.n_hops * self.hop].reshape(self.n_hops, self.hop)
        np.multiply(hops, hops, out=self._sq)
        np.mean(self._sq, axis=1, out=self._power)
        self.level_dbfs = float(10.0 * np.log10(float(self._power.max()) + 1e-12))
        return int(np.count_nonzero(self._power > self.threshold)) >= self.min_voiced
