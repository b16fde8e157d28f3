"""Backends: one small interface over the numpy interpreter, onnxruntime and LiteRT.

Each backend module has `NAME`, `available() -> bool` and `load(bundle, threads) -> Session`;
a Session has `.name` and `run({input name: array}) -> {role: array}` with roles "logits"
and "embedding". `open_session` picks one: by name, or "auto" (the first installed backend,
in `order`, for which the bundle has a payload).
"""
from __future__ import annotations

from types import ModuleType
from typing import Protocol, Sequence

import numpy as np

from edge.backends import litert, numpy_int8, onnxruntime
from edge.bundle import Bundle
from edge.errors import AvemoError, BundleError

REGISTRY: dict[str, ModuleType] = {"numpy": numpy_int8, "onnxruntime": onnxruntime, "litert": litert}
DEFAULT_ORDER: tuple[str, ...] = ("onnxruntime", "numpy")
_PAYLOADS: dict[str, tuple[str, ...]] = {"numpy": ("npz",), "onnxruntime": onnxruntime.PAYLOAD_ORDER,
                                         "litert": ("tflite",)}
_EXTRAS: dict[str, str] = {"onnxruntime": onnxruntime.EXTRA, "litert": litert.EXTRA}


class Session(Protocol):
    name: str

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def installed_backends() -> list[str]:
    """Names of the backends whose runtime is importable here."""
    return [name for name, module in REGISTRY.items() if module.available()]


def open_session(bundle: Bundle, backend: str = "auto", threads: int = 1,
                 order: Sequence[str] = DEFAULT_ORDER) -> Session:
    """Open `bundle` on `backend` ("auto": first of `order` installed and with a payload)."""
    name = _pick(bundle, order) if backend == "auto" else backend
    if name not in REGISTRY:
        raise AvemoError(f"unknown backend {name!r}: use one of auto, {', '.join(REGISTRY)}")
    module = REGISTRY[name]
    if not module.available():
        raise AvemoError(f"backend {name!r} is not installed: pip install avemo-edge[{_EXTRAS[name]}]")
    return module.load(bundle, threads=threads)


def has_payload_for(bundle: Bundle, backend: str) -> bool:
    """Whether `bundle` has a payload the named backend can run."""
    return any(bundle.has_payload(k) for k in _PAYLOADS.get(backend, ()))


def _pick(bundle: Bundle, order: Sequence[str]) -> str:
    unknown = [n for n in order if n not in REGISTRY]
    if unknown:
        raise AvemoError(f"unknown backend {unknown[0]!r} in backend order: use names from {', '.join(REGISTRY)}")
    for name in order:
        if REGISTRY[name].available() and any(bundle.has_payload(k) for k in _PAYLOADS[name]):
            return name
    raise BundleError(f"{bundle.path}: no backend in {list(order)} is installed with a payload this bundle "
                      f"has ({sorted(bundle.manifest['files'])}): install avemo-edge[ort] or re-export the bundle")

