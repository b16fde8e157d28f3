"""Procedural audio-visual emotion corpus, written as a real data folder.

In:  a folder path, the number of synthetic speakers, clips per speaker and class, labels.
Out: `folder/labels.csv` (path_audio,path_image,label,speaker,corpus) + `audio/*.wav`
     (16 kHz mono, harmonic "voice" whose pitch level/slope, energy, syllable tempo and
     jitter depend on the class) + `faces/*.png` (48x48 gray drawn faces whose mouth curve,
     mouth opening, brow angle/height and eye opening depend on the class). It is read
     back with `load_corpus` like any corpus.

Each speaker has its own base pitch, face shape, skin tone and expression biases. Each clip
draws one expression intensity shared by its voice and face (the common information the
Soft-HGR term can find) plus independent per-modality noise, so classes overlap: a small
model learns it well above chance but not perfectly. Everything is seeded: the same
arguments write byte-identical files.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from edge.settings import AUDIO, FACE

DEFAULT_LABELS = ("neutral", "happy", "sad", "angry", "fear", "surprise")
SECONDS = 1.5
VOICE = {  # pitch ratio, pitch slope, energy, syllables/s, jitter
    "neutral": (1.00, 0.00, 0.50, 4.0, 0.01), "calm": (0.95, -0.05, 0.40, 3.0, 0.005),
    "happy": (1.30, 0.25, 0.75, 5.0, 0.02), "sad": (0.85, -0.30, 0.30, 2.5, 0.01),
    "angry": (1.20, -0.10, 1.00, 6.0, 0.04), "fear": (1.45, 0.05, 0.55, 6.5, 0.06),
    "disgust": (0.90, -0.15, 0.60, 3.5, 0.03), "surprise": (1.50, 0.45, 0.80, 4.5, 0.02),
}
FACE_SHAPE = {  # mouth curve (+ smile), mouth open, brow inner raise, brow height, eye open
    "neutral": (0.00, 0.00, 0.00, 0.00, 1.0), "calm": (0.05, 0.00, 0.00, -0.02, 0.8),
    "happy": (0.16, 0.05, 0.00, 0.02, 0.8), "sad": (-0.13, 0.00, 0.10, 0.00, 0.8),
    "angry": (-0.06, 0.03, -0.12, -0.05, 0.9), "fear": (-0.04, 0.08, 0.10, 0.07, 1.4),
    "disgust": (-0.10, 0.02, -0.06, -0.03, 0.6), "surprise": (0.00, 0.16, 0.04, 0.12, 1.5),
}


def make_synthetic_corpus(folder: str | Path, n_speakers: int = 6, per_class: int = 8,
                          labels: Sequence[str] = DEFAULT_LABELS, seed: int = 0, seconds: float = SECONDS) -> Path:
    """Write the corpus into `folder` (reused when already written with the same arguments)."""
    folder = Path(folder)
    params = {"n_speakers": n_speakers, "per_class": per_class, "labels": list(labels), "seed": seed, "seconds": seconds}
    if _already_written(folder, params):
        return folder
    unknown = [lab for lab in labels if lab not in VOICE]
    if unknown:
        raise ValueError(f"make_synthetic_corpus: unknown labels {unknown}; use some of {sorted(VOICE)}")
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    (folder / "faces").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    speakers = [_speaker(rng, s) for s in range(n_speakers)]
    rows = [_write_clip(folder, spk, label, i, rng, seconds)
            for spk in speakers for label in labels for i in range(per_class)]
    _write_csv(folder / "labels.csv", rows)
    (folder / "synthetic.json").write_text(json.dumps(params) + "\n")
    return folder


def _already_written(folder: Path, params: dict) -> bool:
    meta = folder / "synthetic.json"
    return meta.is_file() and (folder / "labels.csv").is_file() and json.loads(meta.read_text()) == params


def _speaker(rng: np.random.Generator, index: int) -> dict:
    return {"id": f"synth{index:02d}", "f0": rng.uniform(95, 230), "tilt": rng.uniform(0.8, 1.6),
            "width": rng.uniform(0.62, 0.80), "height": rng.uniform(0.80, 0.95), "skin": rng.uniform(150, 215),
            "bias": rng.normal(0, 0.03, 5), "voice_bias": rng.normal(0, 0.06, 3)}


def _write_clip(folder: Path, spk: dict, label: str, index: int, rng: np.random.Generator, seconds: float) -> dict:
    import cv2
    import soundfile as sf
    intensity = rng.uniform(0.35, 1.0)
    name = f"{spk['id']}_{label}_{index:02d}"
    sf.write(folder / "audio" / f"{name}.wav", synth_voice(spk, label, intensity, rng, seconds), AUDIO.sample_rate,
             subtype="PCM_16")
    cv2.imwrite(str(folder / "faces" / f"{name}.png"), draw_face(spk, label, intensity, rng))
    return {"path_audio": f"audio/{name}.wav", "path_image": f"faces/{name}.png", "label": label,
            "speaker": spk["id"], "corpus": "synthetic"}


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _toward(label_value: np.ndarray, neutral_value: np.ndarray, intensity: float) -> np.ndarray:
    return neutral_value + intensity * (label_value - neutral_value)


def synth_voice(spk: dict, label: str, intensity: float, rng: np.random.Generator, seconds: float = SECONDS) -> np.ndarray:
    """float32 [seconds * rate] harmonic voice with a class-shaped pitch/energy/tempo contour."""
    ratio, slope, energy, rate, jitter = _toward(np.array(VOICE[label]), np.array(VOICE["neutral"]), intensity)
    ratio, slope, energy = np.array([ratio, slope, energy]) + spk["voice_bias"] + rng.normal(0, [0.08, 0.12, 0.12])
    sr = AUDIO.sample_rate
    t = np.arange(int(seconds * sr)) / sr
    wobble = np.interp(t, np.linspace(0, seconds, 40), rng.normal(0, 1, 40))
    f0 = spk["f0"] * max(ratio, 0.5) * (1 + slope * (t / seconds - 0.5)) * (1 + max(jitter, 0.0) * wobble)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    tilt = spk["tilt"] / (0.6 + max(energy, 0.1))
    voice = sum(np.sin(k * phase) / k ** tilt for k in range(1, 9))
    syllables = np.clip(np.sin(np.pi * rate * rng.uniform(0.85, 1.15) * t + rng.uniform(0, np.pi)), 0, None) ** 0.7
    wave = voice * syllables * np.clip(energy, 0.1, 1.2) + rng.normal(0, rng.uniform(0.02, 0.12), t.size)
    return (0.6 * wave / np.abs(wave).max()).astype(np.float32) * np.float32(np.clip(energy, 0.2, 1.0))


def _segment_distance(x: np.ndarray, y: np.ndarray, p: tuple[float, float], q: tuple[float, float]) -> np.ndarray:
    px, py = p
    dx, dy = q[0] - px, q[1] - py
    s = np.clip(((x - px) * dx + (y - py) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(x - px - s * dx, y - py - s * dy)


def _ink(dist: np.ndarray, width: float, soft: float = 0.025) -> np.ndarray:
    """Antialiased coverage of a stroke of half-width `width` given the distance field."""
    return 1 / (1 + np.exp((dist - width) / soft))


def draw_face(spk: dict, label: str, intensity: float, rng: np.random.Generator, size: int = FACE.size) -> np.ndarray:
    """uint8 [size, size] gray face; expression from FACE_SHAPE, shape from the speaker."""
    curve, mouth_open, inner, brow_h, eye_open = (
        _toward(np.array(FACE_SHAPE[label]), np.array(FACE_SHAPE["neutral"]), intensity)
        + spk["bias"] + rng.normal(0, [0.05, 0.03, 0.04, 0.03, 0.15]))
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    x, y = x + rng.normal(0, 0.04), y + rng.normal(0, 0.04)
    img = np.full((size, size), rng.uniform(40, 110)) + 20 * y
    face = _ink(np.hypot(x / spk["width"], y / spk["height"]) - 1, 0, 0.03)
    img = img * (1 - face) + spk["skin"] * face
    dark = np.zeros_like(img)
    for side in (-1, 1):
        dark = np.maximum(dark, _ink(np.hypot((x - side * 0.3) / 0.12, (y + 0.15) / (0.06 * max(eye_open, 0.2))) - 1, 0, 0.15))
        brow = _segment_distance(x, y, (side * 0.1, -0.36 - brow_h - inner), (side * 0.45, -0.38 - brow_h + inner / 2))
        dark = np.maximum(dark, _ink(brow, 0.035))
    mouth_y = 0.45 + curve * (1 - (x / 0.35) ** 2)
    lips = np.where(np.abs(x) < 0.35, np.abs(y - mouth_y), 9.0)
    dark = np.maximum(dark, _ink(lips, 0.03 + max(mouth_open, 0.0)))
    img = img * (1 - 0.8 * dark) + rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
