"""LiteRT backend: runs a bundle's model.tflite with ai_edge_litert's interpreter.

In:  {input name: float32 array}.  Out: {role ("logits", "embedding"): float32 array}.
ai_edge_litert is imported only when a session is opened (pip extra avemo-edge[litert]).
int8-quantized input/output tensors are quantized/dequantized here with the tensor's own
scale and zero point; the input is resized when its shape changes (dynamic audio window).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from edge.bundle import Bundle
from edge.errors import BundleError, DeviceError

NAME = "litert"
EXTRA = "litert"


def available() -> bool:
    return importlib.util.find_spec("ai_edge_litert") is not None


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise DeviceError(f"the litert backend needs ai-edge-litert: pip install avemo-edge[{EXTRA}]") from None
    return Interpreter


def _to_tensor(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x.astype(np.float32, copy=False)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.rint(x / scale) + zero, info.min, info.max).astype(dtype)


def _from_tensor(y: np.ndarray, detail: dict) -> np.ndarray:
    if y.dtype == np.float32:
        return y.copy()
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


class LiteRTSession:
    """One .tflite model. `run({input: array}) -> {role: array}`."""

    name = NAME

    def __init__(self, path: Path, input_name: str, outputs: dict[str, str], threads: int = 1) -> None:
        Interpreter = _interpreter_class()
        try:
            self._interp = Interpreter(model_path=str(path), num_threads=threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise BundleError(f"{path}: LiteRT cannot load it ({str(e)[:120]}): re-export the bundle") from None
        self.path, self.input_name = path, input_name
        self._input = self._interp.get_input_details()[0]
        by_name = {d["name"]: d for d in self._interp.get_output_details()}
        missing = [g for g in outputs.values() if g not in by_name]
        if missing:
            raise BundleError(f"{path}: output {missing[0]!r} not in the model ({sorted(by_name)}): "
                              f"re-export the bundle")
        self._outputs = {role: by_name[g] for role, g in outputs.items()}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.input_name not in inputs:
            raise BundleError(f"{self.path}: input {self.input_name!r} missing (got {sorted(inputs)})")
        x = np.asarray(inputs[self.input_name], dtype=np.float32)
        if tuple(self._input["shape"]) != x.shape:
            self._resize(x.shape)
        self._interp.set_tensor(self._input["index"], _to_tensor(x, self._input))
        self._interp.invoke()
        return {role: _from_tensor(self._interp.get_tensor(d["index"]), d) for role, d in self._outputs.items()}

    def _resize(self, shape: tuple[int, ...]) -> None:
        try:
            self._interp.resize_tensor_input(self._input["index"], list(shape))
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise BundleError(f"{self.path}: input shape {list(shape)} not accepted ({str(e)[:120]}): "
                              f"check the input against the bundle's spec") from None
        self._input = self._interp.get_input_details()[0]
        self._outputs = {role: next(d for d in self._interp.get_output_details() if d["name"] == o["name"])
                         for role, o in self._outputs.items()}


def load(bundle: Bundle, threads: int = 1) -> LiteRTSession:
    """Open the bundle's model.tflite (BundleError when it has none)."""
    return LiteRTSession(bundle.payload("tflite"), bundle.input_name, bundle.outputs, threads)
