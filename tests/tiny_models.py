"""Tiny deterministic models and bundles for runtime tests (like piper's generate_test_voice).

`make_face_bundle(folder)` and `make_audio_bundle(folder)` build, in a few seconds, a real
bundle through the whole chain: torch model -> ONNX -> int8 QDQ -> model.npz -> manifest.
`quantized_model(folder, model, shape)` does the same for any small model without a
manifest (used by the backend parity tests). Weights are seeded, so bundles are identical
from run to run; the models are untrained, so predictions are meaningless but stable.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from distill.export import agreement, export_onnx, frontend_node_names, quantize_int8, write_bundle
from distill.to_npz import onnx_to_npz
from distill.models.frontend import LogMelFrontEnd
from edge.bundle import load_bundle, write_manifest
from edge.settings import AUDIO, FaceInput

FACE_LABELS = ("neutral", "happy", "sad", "angry", "fear", "disgust", "surprise")
AUDIO_LABELS = ("neutral", "calm", "happy", "sad", "angry", "fear", "disgust", "surprise")
EMBEDDING_DIM = 16
AUDIO_WINDOW_S = 0.5


class Head(nn.Module):
    """features [B, C] -> (logits [B, n], embedding [B, EMBEDDING_DIM])."""

    def __init__(self, cin: int, n_labels: int) -> None:
        super().__init__()
        self.embedding = nn.Linear(cin, EMBEDDING_DIM)
        self.classifier = nn.Linear(EMBEDDING_DIM, n_labels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embedding(x)
        return self.classifier(torch.relu(emb)), emb


class TinyFace(nn.Module):
    """[B, 1, S, S] -> conv s2 -> depthwise + ReLU6 -> pointwise -> GAP -> Head."""

    def __init__(self, n_labels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.ReLU6(),
            nn.Conv2d(8, 16, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = Head(16, n_labels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.body(x))


class TinyAudio(nn.Module):
    """[B, T] -> log-mel front end -> Conv1d over time -> depthwise Conv1d -> mean -> Head."""

    def __init__(self, n_labels: int) -> None:
        super().__init__()
        self.frontend = LogMelFrontEnd(AUDIO)
        self.body = nn.Sequential(
            nn.Conv1d(AUDIO.n_mels, 16, 3, padding=1), nn.ReLU(),
            nn.Conv1d(16, 16, 3, padding=1, groups=16), nn.ReLU())
        self.head = Head(16, n_labels)

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.body(self.frontend(wave).transpose(1, 2))
        return self.head(feats.mean(dim=2))


def seeded(model_cls: type[nn.Module], *args, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return model_cls(*args).eval()


def random_inputs(shape: Sequence[int], n: int, seed: int = 0, scale: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(scale * rng.standard_normal(shape)).astype(np.float32) for _ in range(n)]


def quantized_model(folder: Path, model: nn.Module, shape: Sequence[int], *, input_name: str = "x",
                    n_calib: int = 16, exclude_prefix: str | None = None, dynamic_time_axis: bool = False,
                    scale: float = 1.0, **scheme: bool) -> dict[str, Path]:
    """Export, quantize (QDQ, per-channel, calibrated on seeded noise; `scheme`: quantize_int8's
    reduce_range / symmetric_activations) and convert one model.
    Returns {"onnx", "int8.onnx", "npz", "float.npz"} paths inside `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    example = torch.from_numpy(random_inputs(shape, 1, seed=99, scale=scale)[0])
    float_path = export_onnx(model, example, folder / "model.onnx", input_name, dynamic_time_axis=dynamic_time_axis)
    exclude = frontend_node_names(float_path, prefix=exclude_prefix) if exclude_prefix else None
    int8_path = quantize_int8(float_path, folder / "model.int8.onnx", random_inputs(shape, n_calib, scale=scale),
                              input_name, nodes_to_exclude=exclude, **scheme)
    onnx_to_npz(int8_path, folder / "model.npz")
    onnx_to_npz(float_path, folder / "float.npz")
    return {"onnx": float_path, "int8.onnx": int8_path, "npz": folder / "model.npz",
            "float.npz": folder / "float.npz"}


def _bundle(folder: Path, model: nn.Module, shape: Sequence[int], *, name: str, labels: Sequence[str],
            input_spec: dict, scale: float, exclude_prefix: str | None, dynamic: bool) -> Path:
    work = folder.parent / f"{folder.name}-work"
    paths = quantized_model(work, model, shape, input_name=input_spec["name"], exclude_prefix=exclude_prefix,
                            dynamic_time_axis=dynamic, scale=scale)
    write_bundle(folder, name=name, modality=name, labels=labels, input_spec=input_spec,
                 embedding_dim=EMBEDDING_DIM, float_onnx=paths["onnx"], int8_onnx=paths["int8.onnx"],
                 quantization={"scheme": "int8-qdq", "per_channel": True, "reduce_range": False,
                               "symmetric_activations": False, "target": "x86"},
                 metrics={"split": "none (untrained test model)"}, agreement=None,
                 provenance={"trained_on": "nothing: seeded random weights", "code": "tests/tiny_models.py"})
    checks = agreement(folder, random_inputs(shape, 8, seed=7, scale=scale), None)
    manifest = load_bundle(folder).manifest
    write_manifest(folder, {**manifest, "agreement": checks})
    return folder


def make_face_bundle(folder: str | Path, labels: Sequence[str] = FACE_LABELS, size: int = 48) -> Path:
    """A tiny face bundle (input "face" [1, 1, size, size]) in `folder`."""
    face = FaceInput(size=size)
    spec = {"name": "face", "shape": [1, 1, size, size], "dtype": "float32", "face": face.to_dict()}
    return _bundle(Path(folder), seeded(TinyFace, len(labels)), (1, 1, size, size), name="face",
                   labels=labels, input_spec=spec, scale=1.0, exclude_prefix=None, dynamic=False)


def make_audio_bundle(folder: str | Path, labels: Sequence[str] = AUDIO_LABELS) -> Path:
    """A tiny audio bundle (input "waveform" [1, T], log-mel inside, front end kept float)."""
    n = int(AUDIO_WINDOW_S * AUDIO.sample_rate)
    spec = {"name": "waveform", "shape": [1, -1], "dtype": "float32", "frontend": AUDIO.to_dict(),
            "window_s": AUDIO_WINDOW_S}
    return _bundle(Path(folder), seeded(TinyAudio, len(labels)), (1, n), name="audio", labels=labels,
                   input_spec=spec, scale=0.1, exclude_prefix="/frontend/", dynamic=True)


def write_dense_tflite(path: str | Path, input_name: str, input_shape: Sequence[int],
                       heads: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """A float LiteRT model: flatten the input, then one FULLY_CONNECTED per named output
    (y = W @ x + b, W [n_out, n_in]). Written with LiteRT's flatbuffer schema (no tensorflow)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as tfl

    def tensor(name: str, shape: Sequence[int], buffer: int) -> "tfl.TensorT":
        t = tfl.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), tfl.TensorType.FLOAT32, buffer
        return t

    def op(code: int, inputs: list[int], outputs: list[int], opt_type: int, options) -> "tfl.OperatorT":
        o = tfl.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs, o.builtinOptionsType, o.builtinOptions = code, inputs, outputs, opt_type, options
        return o

    n_in = int(np.prod(input_shape))
    buffers = [tfl.BufferT()]  # buffer 0: empty, by convention
    tensors = [tensor(input_name, input_shape, 0), tensor("flat", (1, n_in), 0)]
    reshape = tfl.ReshapeOptionsT()
    reshape.newShape = [1, n_in]
    ops = [op(0, [0], [1], tfl.BuiltinOptions.ReshapeOptions, reshape)]
    for name, (w, b) in heads.items():
        for part, arr in (("w", w), ("b", b)):
            buf = tfl.BufferT()
            buf.data = np.ascontiguousarray(arr, np.float32).tobytes()
            buffers.append(buf)
            tensors.append(tensor(f"{name}/{part}", arr.shape, len(buffers) - 1))
        tensors.append(tensor(name, (1, w.shape[0]), 0))
        n = len(tensors)
        ops.append(op(1, [1, n - 3, n - 2], [n - 1], tfl.BuiltinOptions.FullyConnectedOptions,
                      tfl.FullyConnectedOptionsT()))
    codes = []
    for builtin in (tfl.BuiltinOperator.RESHAPE, tfl.BuiltinOperator.FULLY_CONNECTED):
        code = tfl.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, builtin, 1
        codes.append(code)
    graph = tfl.SubGraphT()
    graph.tensors, graph.operators, graph.inputs = tensors, ops, [0]
    graph.outputs = [i for i, t in enumerate(tensors) if t.name in heads]
    model = tfl.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, codes, [graph], buffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    Path(path).write_bytes(builder.Output())
    return Path(path)
