"""distill/models/frontend.py: the in-model log-mel equals edge.features.log_mel and exports small."""
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from distill.models.frontend import LogMelFrontEnd, factorized_weights, split_fft  # noqa: E402
from edge.features import log_mel  # noqa: E402
from edge.settings import AUDIO, AudioFrontEnd  # noqa: E402

MAX_LOG_DIFF = 1e-3
"""Stated tolerance on log-mel values (measured: ~1e-5 on speech-like input in float32)."""
ALLOWED_OPS = {"Reshape", "Slice", "Concat", "Mul", "MatMul", "Add", "Sub", "Log",
               "Shape", "Gather", "Unsqueeze", "Constant", "Div", "Cast", "Squeeze"}


def _signal(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / AUDIO.sample_rate
    chirp = 0.4 * np.sin(2 * np.pi * (200 + 1500 * t) * t)
    wave = chirp + 0.05 * rng.standard_normal(n)
    wave[: n // 8] *= 1e-3                                  # a quiet lead-in, like real speech
    return wave.astype(np.float32)


@pytest.mark.parametrize("n", [32000, 32160, 4800 + 77])
def test_matches_reference_log_mel(n):
    wave = _signal(n, seed=n)
    ref = log_mel(wave)
    out = LogMelFrontEnd()(torch.from_numpy(wave)[None]).numpy()[0]
    assert out.shape == ref.shape == (n // AUDIO.hop - 1, AUDIO.n_mels)
    assert np.abs(out - ref).max() < MAX_LOG_DIFF


def test_batch_rows_are_independent():
    waves = np.stack([_signal(16000, 1), _signal(16000, 2)])
    out = LogMelFrontEnd()(torch.from_numpy(waves)).numpy()
    for row, wave in zip(out, waves):
        assert np.abs(row - log_mel(wave)).max() < MAX_LOG_DIFF


def test_split_fft_and_other_settings():
    assert split_fft(320) == (16, 20)
    assert split_fft(512) == (16, 32)
    fe = AudioFrontEnd(hop=256, n_fft=512, n_mels=64)
    wave = _signal(8192)
    out = LogMelFrontEnd(fe)(torch.from_numpy(wave)[None]).numpy()[0]
    assert np.abs(out - log_mel(wave, fe)).max() < MAX_LOG_DIFF


def test_weights_are_buffers_and_few():
    fe = LogMelFrontEnd()
    assert sum(p.numel() for p in fe.parameters()) == 0
    n_fixed = sum(v.size for v in factorized_weights().values())
    assert n_fixed == sum(b.numel() for b in fe.buffers()) < 10_000   # vs 320 * 322 for a plain DFT


def test_rejects_n_fft_not_two_hops():
    with pytest.raises(ValueError, match="n_fft == 2 \\* hop"):
        LogMelFrontEnd(AudioFrontEnd(hop=100, n_fft=320))


def test_onnx_export_uses_plain_ops_and_is_small():
    buf = io.BytesIO()
    torch.onnx.export(LogMelFrontEnd(), (torch.zeros(1, 32000),), buf, dynamo=False, opset_version=17,
                      input_names=["waveform"], output_names=["logmel"],
                      dynamic_axes={"waveform": {1: "T"}})
    model = onnx.load_from_string(buf.getvalue())
    ops = {n.op_type for n in model.graph.node}
    assert ops <= ALLOWED_OPS, ops - ALLOWED_OPS
    assert not ops & {"STFT", "DFT", "Conv"}
    assert len(buf.getvalue()) < 48_000
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    wave = _signal(24000)
    out = sess.run(None, {"waveform": wave[None]})[0][0]
    assert np.abs(out - log_mel(wave)).max() < MAX_LOG_DIFF
