"""onnxruntime backend: runs a bundle's model.int8.onnx (falling back to model.onnx).

In:  {input name: float32 array}.  Out: {role ("logits", "embedding"): float32 array}.
onnxruntime is imported only when a session is opened (pip extra avemo-edge[ort]).
Sessions run sequentially with `threads` intra-op threads and one inter-op thread.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from edge.bundle import Bundle
from edge.errors import BundleError, DeviceError

NAME = "onnxruntime"
EXTRA = "ort"
PAYLOAD_ORDER = ("int8.onnx", "onnx")


def available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise DeviceError(f"the onnxruntime backend needs onnxruntime: pip install avemo-edge[{EXTRA}]") from None
    return onnxruntime


class OrtSession:
    """One ONNX file in onnxruntime. `run({input: array}) -> {role: array}`."""

    name = NAME

    def __init__(self, path: Path, outputs: dict[str, str], threads: int = 1) -> None:
        ort = _ort()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors for bad models
            raise BundleError(f"{path}: onnxruntime cannot load it ({str(e)[:120]}): re-export the bundle") from None
        graph_outputs = [o.name for o in self._session.get_outputs()]
        missing = [g for g in outputs.values() if g not in graph_outputs]
        if missing:
            raise BundleError(f"{path}: output {missing[0]!r} not in the graph ({graph_outputs}): re-export the bundle")
        self.path = path
        self._roles = list(outputs)
        self._names = list(outputs.values())

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {k: np.asarray(v, dtype=np.float32) for k, v in inputs.items()}
        try:
            values = self._session.run(self._names, feeds)
        except Exception as e:  # shape/name errors come back as onnxruntime-specific types
            shapes = {k: list(v.shape) for k, v in feeds.items()}
            raise BundleError(f"{self.path}: onnxruntime failed on inputs {shapes} ({str(e)[:160]}): "
                              f"check the input against the bundle's spec") from None
        return dict(zip(self._roles, values))


def load(bundle: Bundle, threads: int = 1) -> OrtSession:
    """Open model.int8.onnx, or model.onnx when the bundle has no int8 payload."""
    kind = next((k for k in PAYLOAD_ORDER if bundle.has_payload(k)), PAYLOAD_ORDER[0])
    return OrtSession(bundle.payload(kind), bundle.outputs, threads)
