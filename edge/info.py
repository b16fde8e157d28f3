"""`avemo-edge info`: what this install has: models, backends, the profile, devices."""
from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

import numpy as np

from edge.errors import AvemoError

MODELS_DIR = Path(__file__).resolve().parent / "models"


def _version() -> str:
    try:
        return metadata.version("avemo-edge")
    except metadata.PackageNotFoundError:
        return "source tree"


def _models() -> list[dict]:
    from edge.bundle import load_bundle
    out = []
    folders = sorted(p for p in MODELS_DIR.iterdir() if (p / "manifest.json").is_file()) if MODELS_DIR.is_dir() else []
    for folder in folders:
        try:
            b = load_bundle(folder)
        except AvemoError as err:
            out.append({"name": folder.name, "error": str(err)})
            continue
        files = b.manifest.get("files", {})
        out.append({"name": b.name, "modality": b.modality, "version": b.manifest.get("version"),
                    "labels": list(b.labels), "path": str(folder),
                    "payload_bytes": {k: v.get("bytes") for k, v in files.items()},
                    "metrics": b.manifest.get("metrics", {})})
    return out


def _devices(kind: str) -> list[dict] | str:
    try:
        if kind == "audio":
            from edge.audio import list_audio_devices
            return list_audio_devices()
        from edge.video import list_cameras
        return list_cameras()
    except AvemoError as err:
        return str(err)


def gather(profile_name: str) -> dict:
    from edge.backends import installed_backends
    from edge.profiles import available_profiles, load_profile
    profile = load_profile(profile_name)
    return {
        "avemo_edge": _version(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "numpy": np.__version__,
        "backends_installed": installed_backends(),
        "profile": {"name": profile.name, "device": profile.device.name, "arch": profile.device.arch,
                    "cpu": profile.device.cpu, "budget": {"ram_mb": profile.budget.ram_mb, "hop_ms": profile.budget.hop_ms},
                    "backend_order": list(profile.runtime.backends), "threads": profile.device.threads,
                    "hop_s": profile.audio.hop_s},
        "profiles_available": available_profiles(),
        "models": _models(),
        "audio_input_devices": _devices("audio"),
        "cameras": _devices("video"),
    }
