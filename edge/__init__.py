"""avemo-edge: offline audio-visual emotion recognition on small devices (numpy-only runtime).

    import edge
    with edge.open(video="talk.mp4") as stream:     # or mic=True, camera=0, profile="rpi4"
        for result in stream:
            print(result.t, result.fused)

`tests/test_tiny.py` is the read-first contract of this API. Names are imported on first
use, so `import edge.settings` (the training side does) loads nothing else.
"""
from importlib import import_module

_EXPORTS = {"open": "edge.stream", "Stream": "edge.stream", "Result": "edge.pipeline",
            "load_bundle": "edge.bundle", "load_profile": "edge.profiles", "AvemoError": "edge.errors"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'edge' has no attribute {name!r}")
