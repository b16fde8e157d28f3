"""Every constant the models were trained with, defined once.

The training side (`distill/`) imports these to build its front ends and the runtime reads
them back from each bundle's manifest, so a model never runs with parameters it was not
trained with. If you change a value here, retrain and re-export the models.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

LABELS: tuple[str, ...] = ("neutral", "calm", "happy", "sad", "angry", "fear", "disgust", "surprise")
"""The canonical label set (DESIGN.md). Models use a subset, in their own order."""

OTHER_LABELS: tuple[str, ...] = ("boredom", "contempt", "frustration", "excited", "other")
"""Emotions some corpora use that no model here predicts: kept in data, reported, left out."""

LABEL_ALIASES: dict[str, str] = {
    "calm": "neutral",
    "fearful": "fear",
    "surprised": "surprise",
    "happiness": "happy",
    "sadness": "sad",
    "anger": "angry",
}
"""How a label a model does not know maps onto one it may know (e.g. calm -> neutral).
Labels with no entry here (EmoDB's boredom) are reported and left out, never guessed."""


@dataclass(frozen=True)
class AudioFrontEnd:
    """Log-mel front end shared by `edge/features.py` and the in-model (ONNX) front end."""

    sample_rate: int = 16000
    """Hz. Every source is converted to this rate, mono, float32 in [-1, 1]."""
    hop: int = 160
    """Samples between frames (10 ms)."""
    n_fft: int = 320
    """Frame and FFT length (20 ms). Exactly 2 * hop, so frames are two adjacent hops."""
    n_mels: int = 40
    """Mel bands (HTK mel scale, triangular, unnormalized)."""
    fmin: float = 40.0
    """Hz, lower edge of the first mel band."""
    fmax: float = 8000.0
    """Hz, upper edge of the last mel band."""
    log_floor: float = 1e-6
    """Added to mel power before the natural log."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AudioFrontEnd":
        return cls(**d)


@dataclass(frozen=True)
class FaceInput:
    """What the face student sees: a square gray crop, standardized per crop."""

    size: int = 48
    """Pixels per side."""
    margin: float = 0.1
    """Fraction of the detected box added on each side before cropping."""
    std_floor: float = 8.0
    """Crop standardization: (x - mean) / max(std, std_floor), on 0..255 gray values."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FaceInput":
        return cls(**d)


@dataclass(frozen=True)
class FaceAlignment:
    """How a face is aligned before it is cropped (a face bundle's input.alignment)."""

    level_eyes: bool = True
    """Turn the crop so the detector's eye landmarks are level. The shipped student did not
    train on levelled crops; measured with it (tools/face_alignment.py, docs/students.md):
    no difference on upright faces, +3.9 points accuracy on heads tilted by +-20 degrees.
    Re-measure when a student is retrained."""

    def to_dict(self) -> dict:
        return asdict(self)


AUDIO = AudioFrontEnd()
FACE = FaceInput()
ALIGNMENT = FaceAlignment()
