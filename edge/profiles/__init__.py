"""Firmware profiles: one TOML per device (`edge/profiles/*.toml`, also `firmware_profiles/`).

`load_profile("rpi4")` (or a path to a .toml) -> `Profile`, a frozen tree of dataclasses.
Unknown sections or keys, wrong types and unknown names raise `ConfigError` listing what is
valid, so a typo in a profile never silently falls back to a default.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edge.errors import ConfigError

PROFILE_DIR = Path(__file__).resolve().parent
DEFAULT_PROFILE = "x86"


@dataclass(frozen=True)
class Device:
    name: str
    arch: str
    cpu: str
    threads: int


@dataclass(frozen=True)
class Runtime:
    backends: tuple[str, ...]


@dataclass(frozen=True)
class Quantization:
    scheme: str
    per_channel: bool
    reduce_range: bool
    symmetric: bool
    tflite: bool


@dataclass(frozen=True)
class Audio:
    hop_s: float
    ring_s: float
    vad_dbfs: float
    adapt_min_s: float
    """Voiced audio heard before an audio model with a speaker-statistics input gets the
    speaker's statistics (before: the window's own; edge/speaker.py)."""
    adapt_reset_s: float
    """A silence longer than this (no voiced hop) forgets the speaker's statistics."""


@dataclass(frozen=True)
class Video:
    fps_cap: float
    detect_every: int
    ring_frames: int
    width: int
    height: int


@dataclass(frozen=True)
class Fusion:
    half_life_s: float
    audio_weight: float
    face_weight: float


@dataclass(frozen=True)
class Budget:
    ram_mb: float
    hop_ms: float


@dataclass(frozen=True)
class Serve:
    max_clients: int


@dataclass(frozen=True)
class Profile:
    name: str
    device: Device
    runtime: Runtime
    quantization: Quantization
    audio: Audio
    video: Video
    fusion: Fusion
    budget: Budget
    serve: Serve


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def _coerce(value: Any, kind: Any, where: str) -> Any:
    if kind in ("float", float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind in ("int", int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind in ("bool", bool):
        if isinstance(value, bool):
            return value
    elif kind in ("str", str):
        if isinstance(value, str):
            return value
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: expected {kind}, got {value!r}")


def _section(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(table) - set(names))
    missing = sorted(set(names) - set(table))
    if unknown or missing:
        raise ConfigError(f"{where}: unknown keys {unknown}, missing keys {missing}; valid keys: {names}")
    return cls(**{f.name: _coerce(table[f.name], f.type, f"{where}.{f.name}") for f in fields(cls)})


def _check(profile: Profile, where: str) -> Profile:
    if profile.quantization.scheme not in ("int8", "fp16"):
        raise ConfigError(f"{where}: quantization.scheme must be 'int8' or 'fp16', got {profile.quantization.scheme!r}")
    if not 0 < profile.audio.hop_s < profile.audio.ring_s:
        raise ConfigError(f"{where}: need 0 < audio.hop_s < audio.ring_s")
    if profile.audio.adapt_min_s < 0 or profile.audio.adapt_reset_s <= 0:
        raise ConfigError(f"{where}: need audio.adapt_min_s >= 0 and audio.adapt_reset_s > 0")
    if profile.video.fps_cap <= 0 or profile.video.detect_every < 1 or profile.video.ring_frames < 2:
        raise ConfigError(f"{where}: need video.fps_cap > 0, video.detect_every >= 1, video.ring_frames >= 2")
    if profile.device.threads < 1:
        raise ConfigError(f"{where}: device.threads must be >= 1")
    if profile.serve.max_clients < 1:
        raise ConfigError(f"{where}: serve.max_clients must be >= 1")
    return profile


def resolve_profile_path(name_or_path: str | Path) -> Path:
    """A profile name ("rpi4", "jetson" = "jetson-orin") or a path to a .toml file."""
    text = str(name_or_path)
    if text.endswith(".toml"):
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"{path}: no such profile file")
        return path
    name = {"jetson": "jetson-orin"}.get(text, text)
    path = PROFILE_DIR / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown profile {text!r}; valid profiles: {', '.join(available_profiles())} "
                          f"(or a path to a .toml file)")
    return path


def load_profile(name_or_path: str | Path = DEFAULT_PROFILE) -> Profile:
    path = resolve_profile_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable TOML profile ({exc})") from None
    sections = {f.name: f.type for f in fields(Profile) if f.name != "name"}
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"{path}: unknown sections {unknown}; valid sections: {sorted(sections)}")
    parts = {name: _section(globals()[kind], data.get(name), f"{path.name}: {name}")
             for name, kind in sections.items()}
    return _check(Profile(name=path.stem, **parts), path.name)
