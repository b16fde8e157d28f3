"""Audio features: the reference log-mel front end and the voicing gate.

In:  float32 mono waveform at `AUDIO.sample_rate`, values in [-1, 1].
Out: `log_mel` -> float32 [n_frames, n_mels]; `VoiceGate.voiced` -> bool (speech, not just
     energy: periodic frames with a continuous pitch and a level that moves), `level_dbfs`.

The audio student computes the same log-mel inside its graph (conv/matmul layers with fixed
weights, built by `distill/models/frontend.py`); this numpy version is the reference it is
tested against. Frames are two adjacent hops (n_fft == 2 * hop), so a window of T samples
gives T // hop - 1 frames and framing is a reshape, not a gather.
"""
from __future__ import annotations

from dataclasses import dataclass

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
    """Reference log-mel spectrogram, float32 [n_frames, n_mels] (a new array)."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"log_mel expects a mono 1-D waveform, got shape {wave.shape}")
    return LogMel(len(wave), fe)(wave).astype(np.float32)


class LogMel:
    """`log_mel` with every buffer allocated here, for waveforms of up to `max_samples`: the
    runtime's per-hop front end (speaker statistics). `__call__` returns a view of its own
    float64 output buffer [n_frames(len(wave)), n_mels], overwritten by the next call. It
    computes in float64: numpy's float32 FFT and mixed-precision ufuncs allocate copies."""

    def __init__(self, max_samples: int, fe: AudioFrontEnd = AUDIO) -> None:
        n = n_frames(max_samples, fe)
        if n < 1:
            raise ValueError(f"log_mel needs at least {2 * fe.hop} samples, got {max_samples}")
        self.fe = fe
        self._hann = np.tile(hann_window(fe.n_fft).astype(np.float64), (n, 1))  # ufuncs allocate to broadcast
        self._mel = mel_filterbank(fe).astype(np.float64)
        self._frames = np.empty((n, fe.n_fft))
        self._spec = np.empty((n, fe.n_fft // 2 + 1), np.complex128)
        self._power, self._im = np.empty((2, n, fe.n_fft // 2 + 1))
        self._out = np.empty((n, fe.n_mels))

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        """float32 [T] (read only), T <= max_samples -> float64 log-mel view [T // hop - 1, n_mels]."""
        hop, n = self.fe.hop, n_frames(len(wave), self.fe)
        if not 1 <= n <= len(self._out):
            raise ValueError(f"log_mel needs {2 * hop}..{(len(self._out) + 1) * hop} samples, got {len(wave)}")
        hops = wave[: (n + 1) * hop].reshape(n + 1, hop)
        x, spec, power, im, out = self._frames[:n], self._spec[:n], self._power[:n], self._im[:n], self._out[:n]
        np.copyto(x[:, :hop], hops[:-1])
        np.copyto(x[:, hop:], hops[1:])
        np.multiply(x, self._hann[:n], out=x)
        np.fft.rfft(x, axis=1, out=spec)
        np.multiply(spec.real, spec.real, out=power)
        np.multiply(spec.imag, spec.imag, out=im)
        np.add(power, im, out=power)
        np.matmul(power, self._mel, out=out)
        np.add(out, self.fe.log_floor, out=out)
        return np.log(out, out=out)


@dataclass(frozen=True)
class GateParams:
    """What the voicing gate calls speech; the defaults are measured (docs/voicing-gate.md)."""

    frame_hops: int = 4
    """Analysis frame, in front-end hops (4 x 10 ms = 40 ms: three periods of 75 Hz)."""
    step_hops: int = 2
    """Frame step, in front-end hops (20 ms: frames overlap by half)."""
    pitch_hz: tuple[float, float] = (75.0, 400.0)
    """Pitch range searched by the autocorrelation (lags sample_rate / 400 .. / 75)."""
    max_hz: float = 1000.0
    """Band the autocorrelation sees (power spectrum cut above): voiced speech's strongest
    harmonics are below it, while broadband noise (and fricatives) would dilute the peak."""
    periodicity: float = 0.6
    """Normalized autocorrelation peak above which a loud frame is periodic (voiced)."""
    pitch_jump: float = 0.15
    """Largest relative pitch-lag change between two adjacent voiced frames of one voice."""
    min_voiced_pairs: int = 4
    """Adjacent voiced-frame pairs with a continuous pitch a window needs (the synthetic noises
    reach 2 at most)."""
    min_modulation_db: float = 1.0
    """Least standard deviation (dB) of the levels of the frames in voiced pairs: a hum is
    periodic but flat (syllables move a voice's level)."""

    def __post_init__(self) -> None:
        if self.frame_hops % self.step_hops:
            raise ValueError(f"GateParams: frame_hops {self.frame_hops} is not a multiple of "
                             f"step_hops {self.step_hops}")


GATE = GateParams()
GATE_BLOCK = 32
"""Frames the gate analyses at a time: its FFT buffers hold this many frames, not the window's
(~8 MB of float64 for a 3 s window's 149 frames, ~1.7 MB in blocks of 32)."""


class VoiceGate:
    """Voicing gate over the latest window: is someone speaking, not just is it loud.

    A 40 ms frame (one every 20 ms) is voiced when it is louder than `threshold_dbfs` and
    periodic: the normalized autocorrelation of its band below `max_hz` (Hann window, divided
    by the window's own autocorrelation, as Boersma's pitch tracker does) peaks above
    `periodicity` at a lag inside the pitch range, not on the range's edge.
    The window is voiced when at least `min_voiced_pairs` pairs of adjacent frames are voiced
    with a continuous pitch (noise makes isolated periodic-looking frames, a voice makes runs)
    and those frames' levels vary by `min_modulation_db` (syllables; a hum is flat).
    The thresholds (`GateParams`) and what they reject are measured in docs/voicing-gate.md.
    `level_dbfs` is the loudest 10 ms hop's mean-square level, `pairs` the count of voiced
    pairs (how close a rejected window came). Every buffer is allocated here:
    `voiced` allocates nothing and does not write to the caller's window.
    """

    def __init__(self, window_samples: int, threshold_dbfs: float = -45.0,
                 params: GateParams = GATE, fe: AudioFrontEnd = AUDIO) -> None:
        self.hop, self.params = fe.hop, params
        self.n_hops = window_samples // fe.hop
        self.threshold = float(10.0 ** (threshold_dbfs / 10.0))  # mean-square power
        self.level_dbfs = -120.0
        self.pairs = 0
        """Voiced pairs in the last window (0 when it was quiet): how close it came."""
        self._sq = np.empty((self.n_hops, fe.hop), np.float32)
        self._power = np.empty(self.n_hops, np.float32)
        self._setup_frames(fe)

    def _setup_frames(self, fe: AudioFrontEnd) -> None:
        p = self.params
        self.frame = p.frame_hops * fe.hop
        self.n_frames = (self.n_hops - p.frame_hops) // p.step_hops + 1
        self.min_lag = int(fe.sample_rate / p.pitch_hz[1])
        self.max_lag = int(np.ceil(fe.sample_rate / p.pitch_hz[0]))
        n_fft = 1 << int(np.ceil(np.log2(self.frame + self.max_lag + 1)))  # linear, not circular
        f, lags = max(self.n_frames, 2), self.max_lag - self.min_lag + 1
        b = min(f, GATE_BLOCK)  # the per-frame analysis buffers hold one block of frames
        self._cut = int(p.max_hz * n_fft / fe.sample_rate) + 1
        hann = hann_window(self.frame).astype(np.float64)
        window_acf = np.fft.irfft(np.abs(np.fft.rfft(hann, n_fft)) ** 2, n_fft)
        self._hann = np.tile(hann, (b, 1))
        self._window_acf = np.tile(window_acf[self.min_lag:self.max_lag + 1] / window_acf[0], (b, 1))
        self._x = np.zeros((b, n_fft))  # float64: numpy's FFT copies float32 input to complex128
        self._spec = np.empty((b, n_fft // 2 + 1), np.complex128)
        self._conj = np.empty_like(self._spec)
        self._acf = np.empty((b, n_fft))
        self._frames, self._means = np.empty((b, self.frame)), np.empty((b, self.frame))
        self._in_range = np.empty((b, lags))
        self._mean, self._energy, self._peak = np.empty(f), np.empty(f), np.empty(f)
        self._level, self._db = np.empty(f), np.empty(f)
        self._lag, self._dlag = np.empty(f, np.intp), np.empty(f - 1, np.intp)
        self._reach = np.empty(f - 1)
        self._loud, self._periodic = np.empty(f, bool), np.empty(f, bool)
        self._pairs, self._ok, self._paired = np.empty(f - 1, bool), np.empty(f, bool), np.empty(f, bool)

    def voiced(self, window: np.ndarray) -> bool:
        """True when `window` (float32 [n] at 16 kHz, read only) holds voiced speech."""
        hops = window[: self.n_hops * self.hop].reshape(self.n_hops, self.hop)
        np.multiply(hops, hops, out=self._sq)
        np.mean(self._sq, axis=1, out=self._power)
        self.level_dbfs = float(10.0 * np.log10(float(self._power.max()) + 1e-12))
        self.pairs = 0
        if self.n_frames < 2 or float(self._power.max()) <= self.threshold:
            return False
        self._periodicity(window)
        self.pairs = self._voiced_pairs()
        return self.pairs >= self.params.min_voiced_pairs and \
            self._modulation_db() >= self.params.min_modulation_db

    def _load_frames(self, window: np.ndarray, first: int, k: int) -> None:
        """Frames first..first+k-1 of the window's end into `_frames[:k]`, their levels, mean
        removed, Hann-windowed."""
        end, step = self.n_hops * self.hop, self.params.step_hops * self.hop
        start = end - (self.n_frames - 1) * step - self.frame
        x, means, mean = self._frames[:k], self._means[:k], self._mean[first:first + k]
        steps = window[start:end].reshape(-1, step)  # a frame is frame_hops / step_hops steps
        for j in range(self.frame // step):  # x contiguous: ufuncs on a strided view would buffer (allocate)
            np.copyto(x[:, j * step:(j + 1) * step], steps[first + j:first + j + k])
        np.multiply(x, x, out=means)
        np.mean(means, axis=1, out=self._level[first:first + k])
        np.greater(self._level[first:first + k], self.threshold, out=self._loud[first:first + k])
        np.mean(x, axis=1, out=mean)
        np.copyto(means, mean[:, None])  # ufuncs buffer (allocate) to broadcast
        np.subtract(x, means, out=x)
        np.multiply(x, self._hann[:k], out=x)

    def _periodicity(self, window: np.ndarray) -> None:
        """Peak normalized autocorrelation of each frame below `max_hz` in the pitch-lag range
        (`_peak`), and its lag index (`_lag`, 0 = `min_lag`), GATE_BLOCK frames at a time."""
        for first in range(0, self.n_frames, self._x.shape[0]):
            k = min(self._x.shape[0], self.n_frames - first)
            self._load_frames(window, first, k)
            self._block_periodicity(first, k)

    def _block_periodicity(self, first: int, k: int) -> None:
        x, spec, acf, in_range = self._x[:k], self._spec[:k], self._acf[:k], self._in_range[:k]
        np.copyto(x[:, : self.frame], self._frames[:k])
        np.fft.rfft(x, axis=1, out=spec)
        np.conjugate(spec, out=self._conj[:k])
        np.multiply(spec, self._conj[:k], out=spec)  # power spectrum (imaginary part 0)
        spec[:, self._cut:] = 0.0
        np.fft.irfft(spec, n=x.shape[1], axis=1, out=acf)
        np.copyto(in_range, acf[:, self.min_lag:self.max_lag + 1])
        np.divide(in_range, self._window_acf[:k], out=in_range)
        np.argmax(in_range, axis=1, out=self._lag[first:first + k])
        np.max(in_range, axis=1, out=self._peak[first:first + k])
        np.add(acf[:, 0], 1e-20, out=self._energy[first:first + k])
        np.divide(self._peak[first:first + k], self._energy[first:first + k], out=self._peak[first:first + k])

    def _voiced_pairs(self) -> int:
        """Adjacent frames both voiced (loud, periodic at an inner lag) with a continuous pitch."""
        last = self.max_lag - self.min_lag
        np.greater(self._peak, self.params.periodicity, out=self._periodic)
        np.logical_and(self._periodic, self._loud, out=self._periodic)
        np.greater(self._lag, 0, out=self._ok)  # a peak on the range's edge is a slope, not a pitch
        np.logical_and(self._periodic, self._ok, out=self._periodic)
        np.less(self._lag, last, out=self._ok)
        np.logical_and(self._periodic, self._ok, out=self._periodic)
        np.subtract(self._lag[1:], self._lag[:-1], out=self._dlag)
        np.abs(self._dlag, out=self._dlag)
        np.add(self._lag[:-1], self.min_lag, out=self._reach)
        np.multiply(self._reach, self.params.pitch_jump, out=self._reach)
        np.less_equal(self._dlag, self._reach, out=self._pairs)
        np.logical_and(self._pairs, self._periodic[1:], out=self._pairs)
        np.logical_and(self._pairs, self._periodic[:-1], out=self._pairs)
        return int(np.count_nonzero(self._pairs))

    def _modulation_db(self) -> float:
        """Standard deviation (dB) of the levels of the frames in voiced pairs."""
        paired = self._paired  # not all voiced frames: one where a louder noise starts over a hum is unpaired
        paired[-1] = False
        np.copyto(paired[:-1], self._pairs)
        np.logical_or(paired[1:], self._pairs, out=paired[1:])
        n = int(np.count_nonzero(paired))
        if n < 2:
            return 0.0
        db = self._db
        np.add(self._level, 1e-12, out=db)
        np.log10(db, out=db)
        np.multiply(db, 10.0, out=db)
        mean = float(np.sum(db, where=paired)) / n
        np.subtract(db, mean, out=db)
        np.square(db, out=db)
        return float(np.sqrt(float(np.sum(db, where=paired)) / n))
