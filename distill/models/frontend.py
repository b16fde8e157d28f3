"""In-model log-mel front end: the torch twin of `edge.features.log_mel`.

In:  waveform float32 [B, T], 16 kHz mono in [-1, 1]; T is trimmed to a multiple of `hop`.
Out: log-mel float32 [B, n_frames, n_mels], n_frames = T // hop - 1, equal to
     `edge.features.log_mel` within float32 tolerance (tests/test_frontend.py states it).

Built only from ops that export to ONNX as Reshape/Slice/Concat/Mul/MatMul/Add/Log, so the
graph needs no STFT/FFT op and the numpy interpreter runs it as plain matmuls:

- framing: reshape to hops [B, H, hop], concat each hop with the next -> [B, F, n_fft];
- Hann window (elementwise Mul);
- a factorized DFT (Cooley-Tukey, n_fft = N1 * N2; sample n = N2*n1 + n2, bin k = k1 + N1*k2):
  a real N1-point DFT over n1 (MatMul), a complex twiddle Mul, an N2-point DFT over n2 that
  keeps only the k2 columns holding bins 0..n_fft/2 (MatMul);
- power (re^2 + im^2), a mel MatMul whose rows follow the factorized bin order (zero rows for
  bins above n_fft/2), then log(x + log_floor).

Every fixed weight is a registered buffer (not trained, not counted as a parameter): about
8.7K floats for the default 320 = 16 x 20 split, instead of a 320 x 322 DFT matrix.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from edge.features import hann_window, mel_filterbank
from edge.settings import AUDIO, AudioFrontEnd


def split_fft(n_fft: int) -> tuple[int, int]:
    """The factor pair (N1, N2) of n_fft closest to its square root, N1 <= N2."""
    n1 = max(d for d in range(1, math.isqrt(n_fft) + 1) if n_fft % d == 0)
    return n1, n_fft // n1


def _dft(n: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and -sin parts of an n-point DFT, [n, cols] (input index, output index)."""
    angle = 2.0 * np.pi * np.outer(np.arange(n), np.arange(cols)) / n
    return np.cos(angle), -np.sin(angle)


def factorized_weights(fe: AudioFrontEnd = AUDIO) -> dict[str, np.ndarray]:
    """Fixed float32 weights of the factorized DFT + mel projection (see module docstring)."""
    n1, n2 = split_fft(fe.n_fft)
    k2_keep = (fe.n_fft // 2) // n1 + 1                 # columns k2 that hold bins <= n_fft/2
    c1, s1 = _dft(n1, n1)                                 # [n1 (input), k1]
    c2, s2 = _dft(n2, k2_keep)                            # [n2 (input), k2]
    tw = 2.0 * np.pi * np.outer(np.arange(n1), np.arange(n2)) / fe.n_fft   # [k1, n2]
    bins = np.arange(n1)[:, None] + n1 * np.arange(k2_keep)[None, :]      # k = k1 + n1*k2
    mel = mel_filterbank(fe).astype(np.float64)
    rows = np.where((bins <= fe.n_fft // 2)[..., None], mel[np.minimum(bins, fe.n_fft // 2)], 0.0)
    w = {"window": hann_window(fe.n_fft).reshape(n1, n2),
         "dft1_re": c1.T, "dft1_im": s1.T,                # [k1, n1]: left-multiply
         "twiddle_re": np.cos(tw), "twiddle_im": -np.sin(tw),
         "dft2_re": c2, "dft2_im": s2,                    # [n2, k2]: right-multiply
         "mel": rows.reshape(n1 * k2_keep, fe.n_mels)}
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in w.items()}


class LogMelFrontEnd(torch.nn.Module):
    """waveform [B, T] -> log-mel [B, T // hop - 1, n_mels] (module docstring)."""

    def __init__(self, fe: AudioFrontEnd = AUDIO) -> None:
        super().__init__()
        if fe.n_fft != 2 * fe.hop:
            raise ValueError(f"LogMelFrontEnd needs n_fft == 2 * hop, got {fe.n_fft}, {fe.hop}")
        self.fe = fe
        self.n1, self.n2 = split_fft(fe.n_fft)
        for name, value in factorized_weights(fe).items():
            self.register_buffer(name, torch.from_numpy(value))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        hop = self.fe.hop
        n_hops = wave.shape[1] // hop
        hops = wave[:, : n_hops * hop].reshape(wave.shape[0], n_hops, hop)
        frames = torch.cat([hops[:, :-1], hops[:, 1:]], dim=2)
        x = frames.reshape(wave.shape[0], n_hops - 1, self.n1, self.n2) * self.window
        a_re = torch.matmul(self.dft1_re, x)             # [B, F, k1, n2]
        a_im = torch.matmul(self.dft1_im, x)
        b_re = a_re * self.twiddle_re - a_im * self.twiddle_im
        b_im = a_re * self.twiddle_im + a_im * self.twiddle_re
        x_re = torch.matmul(b_re, self.dft2_re) - torch.matmul(b_im, self.dft2_im)
        x_im = torch.matmul(b_re, self.dft2_im) + torch.matmul(b_im, self.dft2_re)
        power = (x_re * x_re + x_im * x_im).reshape(wave.shape[0], n_hops - 1, -1)
        return torch.log(torch.matmul(power, self.mel) + self.fe.log_floor)
