"""Shared fixtures: model bundles and media for the runtime tests.

`bundles` prefers the shipped trained models (edge/models/{audio,face}); when they are not
there (a fresh checkout before training), it builds small untrained bundles with torch
(tests/tiny_models.py), so the runtime tests run either way.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AVEMO_DATA", REPO.parent / "shared" / "data"))
DEMO_VIDEO = REPO / "edge" / "assets" / "demo.mp4"
DEMO_WAV = REPO / "edge" / "assets" / "demo.wav"
PORTRAIT = REPO / "edge" / "assets" / "portrait.jpg"


def rss_kb(pid: int | str = "self") -> int:
    """The resident set size (VmRSS) of process `pid` (default: this one), kB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def shipped(name: str) -> Path | None:
    path = REPO / "edge" / "models" / name
    return path if (path / "manifest.json").is_file() else None


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, str]:
    if shipped("audio") and shipped("face"):
        return {"audio": "audio", "face": "face"}
    pytest.importorskip("torch")
    from tiny_models import make_audio_bundle, make_face_bundle
    root = tmp_path_factory.mktemp("bundles")
    return {"audio": str(make_audio_bundle(root / "audio")), "face": str(make_face_bundle(root / "face"))}


@pytest.fixture(scope="session")
def speech_video() -> Path:
    """A real video with speech: a CREMA-D clip when ../shared/data is there, else the demo clip."""
    clip = SHARED_DATA / "cremad_fixture" / "video" / "1001_DFA_ANG_XX.flv"
    return clip if clip.is_file() else DEMO_VIDEO
