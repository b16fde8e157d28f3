import numpy as np
import pytest

from edge.features import VoiceGate, frames, log_mel, mel_filterbank, n_frames
from edge.settings import AUDIO


def test_frames_are_two_adjacent_hops():
    x = np.arange(AUDIO.hop * 5, dtype=np.float32)
    f = frames(x)
    assert f.shape == (4, AUDIO.n_fft) == (n_frames(len(x)), AUDIO.n_fft)
    assert np.array_equal(f[1], x[AUDIO.hop:AUDIO.hop + AUDIO.n_fft])


def test_mel_filterbank_covers_the_band():
    m = mel_filterbank()
    assert m.shape == (AUDIO.n_fft // 2 + 1, AUDIO.n_mels)
    assert (m.sum(0) > 0).all()  # no empty band
    assert m.max() <= 1.0 + 1e-6


def test_log_mel_peaks_at_the_tone():
    sr = AUDIO.sample_rate
    t = np.arange(sr) / sr
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    spec = log_mel(tone)
    assert spec.shape == (sr // AUDIO.hop - 1, AUDIO.n_mels)
    peak = int(np.argmax(spec.mean(0)))
    centre_bin = np.argmax(mel_filterbank()[:, peak])
    assert abs(centre_bin * sr / AUDIO.n_fft - 1000) < 150


def test_log_mel_rejects_bad_input():
    with pytest.raises(ValueError, match="mono"):
        log_mel(np.zeros((2, 16000), np.float32))
    with pytest.raises(ValueError, match="at least"):
        log_mel(np.zeros(100, np.float32))


def test_voice_gate():
    n = 2 * AUDIO.sample_rate
    gate = VoiceGate(n, threshold_dbfs=-45)
    rng = np.random.default_rng(0)
    assert not gate.voiced(np.zeros(n, np.float32))
    assert not gate.voiced((1e-4 * rng.standard_normal(n)).astype(np.float32))
    speechy = np.zeros(n, np.float32)
    speechy[: n // 4] = 0.1 * rng.standard_normal(n // 4)
    assert gate.voiced(speechy) and gate.level_dbfs > -30
