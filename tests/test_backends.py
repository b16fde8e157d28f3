"""edge/backends: the numpy int8 interpreter agrees with onnxruntime; the registry picks and
reports backends; LiteRT runs a real .tflite; memory stays flat over repeated runs.

Tolerance for int8 models: numpy and onnxruntime outputs (dequantized `logits` and
`embedding`) differ by at most OUTPUT_STEPS quantization steps of that output (its
DequantizeLinear scale), and the argmax of the logits is the same on every input.
Float models: rtol FLOAT_RTOL (plus a small atol for values near zero).
"""
from __future__ import annotations

import gc
import json
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
from torch import nn  # noqa: E402

import edge.backends as backends  # noqa: E402
from edge.backends import litert, numpy_int8, numpy_ops, onnxruntime as ort_backend  # noqa: E402
from edge.backends.numpy_int8 import NumpyInterpreter  # noqa: E402
from edge.backends.onnxruntime import OrtSession  # noqa: E402
from edge.bundle import load_bundle, write_manifest  # noqa: E402
from edge.errors import AvemoError, BundleError  # noqa: E402
from distill.models.frontend import LogMelFrontEnd  # noqa: E402
from tiny_models import (Head, make_audio_bundle, make_face_bundle, quantized_model, random_inputs,  # noqa: E402
                               seeded, write_dense_tflite)

N_INPUTS = 50
OUTPUT_STEPS = 1.0
FLOAT_RTOL, FLOAT_ATOL = 1e-4, 1e-5
ROLES = {"logits": "logits", "embedding": "embedding"}


class Pooled(nn.Module):
    """body -> global average pool -> Head; the body decides which ops the graph holds."""

    def __init__(self, body: nn.Module, channels: int, dims: int = 2) -> None:
        super().__init__()
        self.body = body
        self.pool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool1d(1)
        self.head = Head(channels, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.pool(self.body(x)).flatten(1))


class SqueezeExcite(nn.Module):
    """A sigmoid gate broadcast over the feature map (Sigmoid, as the detector, and broadcast Mul)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, 4, 1), nn.ReLU(), nn.Conv2d(4, c, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x)


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class FrontEndNet(nn.Module):
    """Float log-mel front end (Reshape/Slice/Concat/MatMul/Log) + a small conv head."""

    def __init__(self) -> None:
        super().__init__()
        self.frontend = LogMelFrontEnd()
        self.body = nn.Sequential(nn.Conv1d(40, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = Head(8, 5)

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.pool(self.body(self.frontend(wave).transpose(1, 2))).flatten(1))


def _conv_stack() -> nn.Module:
    return Pooled(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, 2, 1), nn.ReLU(),
                                nn.MaxPool2d(2), Residual(12), nn.AvgPool2d(3, 1, 1, count_include_pad=False)), 12)


def _depthwise() -> nn.Module:
    return Pooled(nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU6(), nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.ReLU6(),
                                nn.Conv2d(8, 16, 1), nn.ReLU6()), 16)


def _squeeze_excite() -> nn.Module:
    return Pooled(nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), SqueezeExcite(8)), 8)


def _conv1d() -> nn.Module:
    return Pooled(nn.Sequential(nn.Conv1d(4, 8, 5, 2, 2), nn.ReLU(), nn.Conv1d(8, 8, 3, 1, 2, dilation=2, groups=8),
                                nn.ReLU(), nn.Conv1d(8, 12, 1), nn.ReLU()), 12, dims=1)


def _pools() -> nn.Module:
    """MaxPool and AveragePool with padding, stride != kernel and overlapping windows."""
    return Pooled(nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Conv2d(8, 8, 3, 1, 1),
                                nn.ReLU(), nn.AvgPool2d(3, 2, 1, count_include_pad=True), nn.MaxPool2d(2, 1)), 8)


class Upsampled(nn.Module):
    """A feature-pyramid join (the face detector's): coarse features upsampled 2x (Resize,
    nearest) and added to finer ones, then a sigmoid gate."""

    def __init__(self) -> None:
        super().__init__()
        self.fine = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU())
        self.coarse = nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.fine(x)
        joined = fine + self.up(self.coarse(fine))
        return joined * torch.sigmoid(joined)


def _gemm() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 24), nn.ReLU(), Head(24, 5))


MODELS = {
    "conv2d": (_conv_stack, (1, 1, 24, 24), {}),
    "depthwise": (_depthwise, (1, 1, 24, 24), {}),
    "se_sigmoid": (_squeeze_excite, (1, 1, 24, 24), {}),
    "conv1d": (_conv1d, (1, 4, 40), {}),
    "pools": (_pools, (1, 1, 24, 24), {}),
    "gemm": (_gemm, (1, 32), {}),
    "upsample": (lambda: Pooled(Upsampled(), 8), (1, 1, 24, 24), {}),
    "frontend": (FrontEndNet, (1, 3200), {"exclude_prefix": "/frontend/", "dynamic_time_axis": True, "scale": 0.1}),
}
OTHER_LENGTHS = {"frontend": (1600, 4800)}
"""Models exported with a dynamic time axis also run at these input lengths."""


@pytest.fixture(scope="module", params=sorted(MODELS))
def model_case(request, tmp_path_factory):
    build, shape, opts = MODELS[request.param]
    paths = quantized_model(tmp_path_factory.mktemp(request.param), seeded(build), shape, **opts)
    return request.param, shape, opts.get("scale", 1.0), paths


def _output_scale(npz: Path, output: str) -> float:
    with np.load(npz) as z:
        graph = json.loads(z["__graph__"].tobytes())
        node = next(n for n in graph["nodes"] if output in n["outputs"])
        assert node["op"] == "DequantizeLinear", f"{output} is not a quantized output"
        return float(z["init/" + node["inputs"][1]])


def test_int8_numpy_matches_onnxruntime(model_case):
    name, shape, scale, paths = model_case
    interp, ort = NumpyInterpreter(paths["npz"]), OrtSession(paths["int8.onnx"], ROLES)
    steps = {role: OUTPUT_STEPS * _output_scale(paths["npz"], role) for role in ROLES}
    inputs = random_inputs(shape, N_INPUTS, seed=3, scale=scale)
    inputs += [random_inputs((1, n), 1, seed=n, scale=scale)[0] for n in OTHER_LENGTHS.get(name, ())]
    for x in inputs:
        ours, ref = interp.run({"x": x}), ort.run({"x": x})
        assert np.argmax(ours["logits"]) == np.argmax(ref["logits"]), name
        for role, step in steps.items():
            np.testing.assert_allclose(ours[role], ref[role], rtol=0, atol=step * 1.0001, err_msg=f"{name}/{role}")


@pytest.mark.parametrize("scheme", [{"symmetric_activations": True}, {"reduce_range": True}])
def test_other_quantization_schemes(scheme, tmp_path):
    """Jetson/TensorRT (int8 activations, zero point 0) and x86-without-VNNI (reduce_range)."""
    paths = quantized_model(tmp_path, seeded(_depthwise), (1, 1, 24, 24), **scheme)
    if scheme.get("symmetric_activations"):
        with np.load(paths["npz"]) as z:
            graph = json.loads(z["__graph__"].tobytes())
            zeros = [z["init/" + n["inputs"][2]] for n in graph["nodes"] if n["op"] == "QuantizeLinear"]
        assert zeros and all(zp.dtype == np.int8 and not zp.any() for zp in zeros)
    interp, ort = NumpyInterpreter(paths["npz"]), OrtSession(paths["int8.onnx"], ROLES)
    step = _output_scale(paths["npz"], "logits")
    for x in random_inputs((1, 1, 24, 24), 10, seed=6):
        ours, ref = interp.run({"x": x}), ort.run({"x": x})
        assert np.argmax(ours["logits"]) == np.argmax(ref["logits"])
        np.testing.assert_allclose(ours["logits"], ref["logits"], rtol=0, atol=OUTPUT_STEPS * step * 1.0001)


def test_float_numpy_matches_onnxruntime(model_case):
    name, shape, scale, paths = model_case
    interp, ort = NumpyInterpreter(paths["float.npz"]), OrtSession(paths["onnx"], ROLES)
    for x in random_inputs(shape, 5, seed=4, scale=scale):
        ours, ref = interp.run({"x": x}), ort.run({"x": x})
        for role in ROLES:
            np.testing.assert_allclose(ours[role], ref[role], rtol=FLOAT_RTOL, atol=FLOAT_ATOL, err_msg=name)


def test_integer_path_is_planned(model_case):
    """Every quantized Conv/Gemm/MatMul runs as an integer step (not dequantize-then-float)."""
    name, _, _, paths = model_case
    steps = [s.step for s in NumpyInterpreter(paths["npz"])._steps]
    convs = [s for s in steps if isinstance(s, numpy_ops.ConvStep)]
    dense = [s for s in steps if isinstance(s, numpy_ops.DenseStep)]
    assert all(c.zero is not None for c in convs)
    assert sum(d.weights is not None for d in dense) >= 2  # the head's two Gemms
    assert all(d.weights is not None for d in dense) or name == "frontend"  # front-end MatMuls stay float


def test_requantization_is_fused(model_case):
    """A QuantizeLinear that alone reads an integer Conv/Gemm output runs in that step's epilogue,
    and quantized activations stay as q - zero (float32) wherever only DequantizeLinears read them."""
    _, _, _, paths = model_case
    steps = [s.step for s in NumpyInterpreter(paths["npz"])._steps]
    integer = [s for s in steps if isinstance(s, (numpy_ops.ConvStep, numpy_ops.DenseStep)) and s.zero is not None]
    quantizers = [s for s in steps if isinstance(s, numpy_ops.QuantizeStep)]
    assert integer and all(s.epilogue.clip is not None for s in integer)
    assert not {q.src for q in quantizers} & {s.dst for s in integer}
    assert quantizers and all(q.centered for q in quantizers)


def test_blas_threads_are_set_for_a_run_and_restored(face_bundle, monkeypatch):
    blas = numpy_int8._BlasThreads()
    if blas._get is None:
        pytest.skip("numpy's BLAS here is not an OpenBLAS this backend can find")
    before = blas._get()
    session = numpy_int8.load(face_bundle, threads=1)
    seen = []
    run = session.interpreter.run
    monkeypatch.setattr(session.interpreter, "run", lambda feeds: (seen.append(blas._get()), run(feeds))[1])
    blas.limit(3)
    try:
        session.run({"face": random_inputs(face_bundle.input_shape, 1)[0]})
        assert seen == [1] and blas._get() == 3
    finally:
        blas.limit(before)


def test_memory_stays_flat(model_case):
    _, shape, scale, paths = model_case
    interp = NumpyInterpreter(paths["npz"])
    x = random_inputs(shape, 1, seed=5, scale=scale)[0]
    for _ in range(3):
        interp.run({"x": x})
    tracemalloc.start()
    try:  # gc.collect() also empties CPython's tuple/float free lists, which tracemalloc counts
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            interp.run({"x": x})
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert growth < 64 * 1024, f"memory grew by {growth} bytes over 200 runs"


def test_input_shape_mismatch_names_expected_and_got(model_case):
    _, shape, _, paths = model_case
    interp = NumpyInterpreter(paths["npz"])
    bad = np.zeros((2,) + tuple(shape), np.float32)
    with pytest.raises(BundleError, match=r"expects shape .* got"):
        interp.run({"x": bad})
    with pytest.raises(BundleError, match="missing"):
        interp.run({"y": bad})


# ---------------------------------------------------------------- registry and bundles

@pytest.fixture(scope="module")
def face_bundle(tmp_path_factory):
    return load_bundle(make_face_bundle(tmp_path_factory.mktemp("bundles") / "face"))


def test_auto_prefers_onnxruntime_then_follows_order(face_bundle):
    assert backends.open_session(face_bundle).name == "onnxruntime"
    assert backends.open_session(face_bundle, order=["numpy", "onnxruntime"]).name == "numpy"
    assert backends.open_session(face_bundle, order=["litert", "numpy"]).name == "numpy"  # no tflite payload


def test_backends_agree_on_a_bundle(face_bundle):
    sessions = [backends.open_session(face_bundle, name) for name in ("numpy", "onnxruntime")]
    for x in random_inputs(face_bundle.input_shape, 10, seed=8):
        outs = [s.run({"face": x}) for s in sessions]
        assert set(outs[0]) == set(outs[1]) == {"logits", "embedding"}
        assert outs[0]["embedding"].shape == (1, face_bundle.embedding_dim)
        assert np.argmax(outs[0]["logits"]) == np.argmax(outs[1]["logits"])


def test_unknown_backend_names_the_choices(face_bundle):
    with pytest.raises(AvemoError, match="unknown backend 'tensorrt'.*numpy"):
        backends.open_session(face_bundle, "tensorrt")
    with pytest.raises(AvemoError, match="unknown backend 'gpu'"):
        backends.open_session(face_bundle, order=["gpu"])


def test_missing_extra_names_the_pip_extra(face_bundle, monkeypatch):
    monkeypatch.setattr(ort_backend, "available", lambda: False)
    with pytest.raises(AvemoError, match=r"pip install avemo-edge\[ort\]"):
        backends.open_session(face_bundle, "onnxruntime")
    assert backends.open_session(face_bundle).name == "numpy"  # auto skips it
    assert "onnxruntime" not in backends.installed_backends()


def test_lazy_import_failure_names_the_pip_extra(face_bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(AvemoError, match=r"pip install avemo-edge\[ort\]"):
        ort_backend.load(face_bundle)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(AvemoError, match=r"pip install avemo-edge\[litert\]"):
        litert.LiteRTSession(Path("x.tflite"), "face", ROLES)


def test_no_backend_with_payload(face_bundle):
    with pytest.raises(BundleError, match="no backend"):
        backends.open_session(face_bundle, order=["litert"])


def test_litert_without_tflite_payload(face_bundle):
    with pytest.raises(BundleError, match="no model.tflite payload"):
        backends.open_session(face_bundle, "litert")


def test_litert_runs_a_real_tflite(face_bundle, tmp_path):
    pytest.importorskip("ai_edge_litert")
    folder = tmp_path / "face"
    folder.mkdir()
    for f in ("model.onnx", "model.int8.onnx", "model.npz"):
        (folder / f).write_bytes((face_bundle.path / f).read_bytes())
    rng = np.random.default_rng(0)
    n_in = int(np.prod(face_bundle.input_shape))
    heads = {role: (rng.standard_normal((n, n_in)).astype(np.float32), rng.standard_normal(n).astype(np.float32))
             for role, n in (("logits", len(face_bundle.labels)), ("embedding", face_bundle.embedding_dim))}
    write_dense_tflite(folder / "model.tflite", "face", face_bundle.input_shape, heads)
    write_manifest(folder, face_bundle.manifest)
    session = backends.open_session(load_bundle(folder), "litert")
    x = rng.standard_normal(face_bundle.input_shape).astype(np.float32)
    out = session.run({"face": x})
    for role, (w, b) in heads.items():
        np.testing.assert_allclose(out[role], x.reshape(1, -1) @ w.T + b, rtol=1e-4, atol=1e-4)
    with pytest.raises(BundleError, match="missing"):
        session.run({"waveform": x})


def test_audio_bundle_runs_on_both_backends(tmp_path_factory):
    bundle = load_bundle(make_audio_bundle(tmp_path_factory.mktemp("bundles") / "audio"))
    assert bundle.modality == "audio" and bundle.frontend is not None
    n = int(bundle.window_s * bundle.frontend.sample_rate)
    sessions = [backends.open_session(bundle, name) for name in ("numpy", "onnxruntime")]
    for x in random_inputs((1, n), 5, seed=9, scale=0.1):
        outs = [s.run({"waveform": x}) for s in sessions]
        assert np.argmax(outs[0]["logits"]) == np.argmax(outs[1]["logits"])


def test_numpy_backend_is_always_available():
    assert numpy_int8.available() and "numpy" in backends.installed_backends()


def test_graphs_share_one_arena_and_answer_as_alone():
    """The shipped detector and students lay their buffers out in one shared block, at least
    as large as each arena and smaller than all their buffers; interleaved runs, the audio
    input changing length between them, answer exactly what each first (recorded) run did."""
    rng = np.random.default_rng(4)
    sessions, feeds = {}, []
    for name in ("face_detector", "face", "audio"):
        bundle = load_bundle(name)
        sessions[name] = backends.open_session(bundle, "numpy")
        shapes = [(1, n) for n in (16000, 48000)] if name == "audio" else [bundle.input_shape]
        feeds += [(name, {bundle.input_name: rng.standard_normal(s).astype(np.float32)}) for s in shapes]
    first = [sessions[name].run(dict(f)) for name, f in feeds]  # each a recording run (new input shape)
    for _ in range(2):
        for (name, f), want in zip(feeds, first):
            got = sessions[name].run(dict(f))
            for role in want:
                np.testing.assert_array_equal(got[role], want[role], err_msg=f"{name} {role}")
    arenas = [s.interpreter._arena for s in sessions.values()]
    assert all(a.shared is numpy_ops.BLOCK and 0 < a.size <= numpy_ops.BLOCK.array.nbytes for a in arenas)
    assert all(a.size < sum(x.nbytes for o in a.owners for x in o.views.values()) for a in arenas)
