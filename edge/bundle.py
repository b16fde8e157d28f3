"""Model bundles: find, validate and describe one model folder (`avemo-bundle/1`).

In:  a bundle name ("audio", "face": folders under `edge/models/`), a bundle folder, or
     the path of its `manifest.json`.
Out: a frozen `Bundle` describing the model (labels, input spec, outputs, front end) and
     the verified paths of its payloads. Nothing is loaded into memory but the manifest.

Every payload listed in the manifest is checked at load (exists, byte size, sha256), so a
bad bundle fails here with a `BundleError` naming the file, the problem and the fix, never
later inside a backend. The format is documented in docs/bundle-format.md; `write_manifest`
is the one place payload hashes are computed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import BundleError
from edge.settings import AudioFrontEnd, FaceInput
from edge.views import is_zoom_factor

FORMAT = "avemo-bundle/1"
MANIFEST = "manifest.json"
MODELS_DIR = Path(__file__).parent / "models"
PAYLOADS: dict[str, str] = {
    "npz": "model.npz",
    "int8.onnx": "model.int8.onnx",
    "onnx": "model.onnx",
    "tflite": "model.tflite",
}
"""Payload kind -> file name inside the bundle folder."""

_REEXPORT = "re-export it with `make quantize` or reinstall avemo-edge"
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format": str, "name": str, "version": str, "modality": str, "labels": list,
    "input": dict, "outputs": dict, "embedding_dim": int, "files": dict,
}


@dataclass(frozen=True)
class Bundle:
    """A validated model bundle. `payload(kind)` gives the path of a verified payload."""

    path: Path
    manifest: dict
    name: str
    modality: str
    labels: tuple[str, ...]
    input_name: str
    input_shape: tuple[int, ...]
    outputs: dict
    embedding_dim: int
    frontend: AudioFrontEnd | None
    face: FaceInput | None
    window_s: float | None
    mirror_average: bool = False
    """Face only: average the answers for the crop and its mirror image (input.mirror_average)."""
    zoom_views: tuple[float, ...] = ()
    """Face only: also answer for the crop's centre enlarged by each factor (input.zoom_views,
    edge/views.py), averaged with the other views."""
    level_eyes: bool = False
    """Face only: turn the crop so the detector's eye landmarks are level (input.alignment.level_eyes)."""
    detector: dict | None = None
    """Detector only: input.detector (score_threshold, nms_iou)."""
    stats_input: str | None = None
    """Audio only: the name of the second input, the speaker statistics [1, 2, n_mels]
    (input.speaker_stats; edge/speaker.py), or None for a model that normalizes by itself."""

    def has_payload(self, kind: str) -> bool:
        return PAYLOADS.get(kind) in self.manifest["files"]

    def payload(self, kind: str) -> Path:
        """Path of payload `kind` ("npz", "int8.onnx", "onnx", "tflite"); BundleError if absent."""
        if kind not in PAYLOADS:
            raise BundleError(f"{self.path}: unknown payload kind {kind!r}: use one of {sorted(PAYLOADS)}")
        if not self.has_payload(kind):
            raise BundleError(f"{self.path}: bundle has no {PAYLOADS[kind]} payload: "
                              f"use another backend or {_REEXPORT}")
        return self.path / PAYLOADS[kind]


def _sha256():
    """A sha256 hasher from Python's own implementation where it has one: hashlib's loads
    OpenSSL's libcrypto, 3.3 MB resident, for the few small files a bundle hashes at load."""
    try:
        from _sha2 import sha256  # Python >= 3.12
    except ImportError:
        try:
            from _sha256 import sha256  # Python 3.11
        except ImportError:
            from hashlib import sha256
    return sha256()


def file_digest(path: Path) -> dict[str, Any]:
    """{"sha256": hex, "bytes": n} of one file."""
    h = _sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"sha256": h.hexdigest(), "bytes": path.stat().st_size}


def write_manifest(folder: str | Path, manifest: dict) -> Path:
    """Write `folder/manifest.json`, with `files` set to the digests of the payloads present."""
    folder = Path(folder)
    files = {fname: file_digest(folder / fname) for fname in PAYLOADS.values() if (folder / fname).is_file()}
    out = folder / MANIFEST
    out.write_text(json.dumps({**manifest, "files": files}, indent=2) + "\n", encoding="utf-8")
    return out


def load_bundle(path_or_name: str | Path) -> Bundle:
    """Resolve, read and validate a bundle; every problem raises BundleError."""
    folder = _resolve(path_or_name)
    manifest = _read_manifest(folder / MANIFEST)
    _check_fields(folder / MANIFEST, manifest)
    try:
        _check_files(folder, manifest["files"])
    except OSError as e:
        raise BundleError(f"{e.filename}: cannot read payload ({e.strerror}): check file permissions") from None
    return _build(folder, manifest)


def _resolve(path_or_name: str | Path) -> Path:
    path = Path(path_or_name)
    if path.is_file() and path.name == MANIFEST:
        return path.parent
    if path.is_dir():
        return path
    if isinstance(path_or_name, str) and path.name == path_or_name and (MODELS_DIR / path_or_name).is_dir():
        return MODELS_DIR / path_or_name
    builtin = sorted(p.name for p in MODELS_DIR.iterdir() if p.is_dir()) if MODELS_DIR.is_dir() else []
    raise BundleError(f"{path_or_name}: no such bundle: pass a bundle folder, its {MANIFEST}, "
                      f"or a built-in name ({', '.join(builtin) or 'none installed'})")


def _read_manifest(path: Path) -> dict:
    if not path.is_file():
        raise BundleError(f"{path}: manifest missing: a bundle folder needs a {MANIFEST}; {_REEXPORT}")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise BundleError(f"{path}: cannot read manifest ({e.strerror}): check file permissions") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BundleError(f"{path}: not valid UTF-8 JSON ({e}): {_REEXPORT}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: manifest must be a JSON object, got {type(manifest).__name__}: {_REEXPORT}")
    return manifest


def _check_fields(path: Path, m: dict) -> None:
    def bad(problem: str) -> BundleError:
        return BundleError(f"{path}: {problem}: fix the manifest or {_REEXPORT}")

    if m.get("format") != FORMAT:
        raise bad(f"format is {m.get('format')!r}, this avemo-edge reads {FORMAT!r}")
    for key, typ in _REQUIRED.items():
        if key not in m:
            raise bad(f"required field {key!r} is missing")
        if not isinstance(m[key], typ) or isinstance(m[key], bool):
            raise bad(f"field {key!r} must be {typ.__name__}, got {type(m[key]).__name__}")
    labels = m["labels"]
    if not labels or not all(isinstance(x, str) and x for x in labels):
        raise bad("labels must be a non-empty list of non-empty strings")
    if len(set(labels)) != len(labels):
        raise bad(f"labels are not unique: {labels}")
    if not all(isinstance(v, str) for v in m["outputs"].values()):
        raise bad("outputs must map roles to graph output names (strings)")
    if m["modality"] != "detector" and m["embedding_dim"] < 1:
        raise bad(f"embedding_dim must be positive, got {m['embedding_dim']}")
    if m["modality"] != "detector" and "logits" not in m["outputs"]:
        raise bad("outputs must map 'logits' (and 'embedding') to graph output names")
    _check_input(m["modality"], m["input"], bad)


def _check_input(modality: str, spec: dict, bad) -> None:
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        raise bad("input.name must be a non-empty string")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and not isinstance(d, bool)
                                                           for d in shape):
        raise bad(f"input.shape must be a list of ints, got {shape!r}")
    if spec.get("dtype", "float32") != "float32":
        raise bad(f"input.dtype must be 'float32', got {spec.get('dtype')!r}")
    if modality == "audio":
        _settings(spec, "frontend", AudioFrontEnd, bad)
        if len(shape) != 2 or not isinstance(spec.get("window_s"), (int, float)) or spec["window_s"] <= 0:
            raise bad(f"an audio bundle needs input.shape [1, T] and a positive input.window_s, got {shape}")
        stats = spec.get("speaker_stats")
        if "speaker_stats" in spec and (not isinstance(stats, str) or not stats or stats == spec["name"]):
            raise bad(f"input.speaker_stats must name the speaker-statistics input (not {spec['name']!r}), "
                      f"got {stats!r}")
    elif modality == "face":
        face = _settings(spec, "face", FaceInput, bad)
        if shape != [1, 1, face.size, face.size]:
            raise bad(f"a face bundle needs input.shape [1, 1, {face.size}, {face.size}], got {shape}")
        if not isinstance(spec.get("mirror_average", False), bool):
            raise bad(f"input.mirror_average must be true or false, got {spec['mirror_average']!r}")
        zooms = spec.get("zoom_views", [])
        if not isinstance(zooms, list) or not all(is_zoom_factor(z) for z in zooms):
            raise bad(f"input.zoom_views must be a list of zoom factors above 1 and at most 2 (e.g. [1.1]), "
                      f"got {zooms!r}")
        alignment = spec.get("alignment", {"level_eyes": False})
        if not isinstance(alignment, dict) or not isinstance(alignment.get("level_eyes"), bool):
            raise bad(f"input.alignment must be an object with level_eyes true or false, got {alignment!r}")
    elif modality == "detector":
        _check_detector(spec, shape, bad)
    else:
        raise bad(f"modality must be 'audio', 'face' or 'detector', got {modality!r}")


def _check_detector(spec: dict, shape: list, bad) -> None:
    """A detector bundle: input [1, 3, H, W] (multiples of 32) and its decoding thresholds."""
    if len(shape) != 4 or shape[:2] != [1, 3] or any(d <= 0 or d % 32 for d in shape[2:]):
        raise bad(f"a detector bundle needs input.shape [1, 3, H, W] with H, W multiples of 32, got {shape}")
    det = spec.get("detector")
    keys = ("score_threshold", "nms_iou")
    if not isinstance(det, dict) or not all(isinstance(det.get(k), (int, float)) and 0 < det[k] < 1 for k in keys):
        raise bad(f"input.detector must give {' and '.join(keys)} between 0 and 1, got {det!r}")
    box = det.get("student_box")
    if not isinstance(box, dict) or not all(isinstance(box.get(k), (int, float)) for k in ("side", "dy")) \
            or not box["side"] > 0:
        raise bad(f"input.detector.student_box must give side (> 0) and dy, got {box!r}")


def _settings(spec: dict, key: str, cls: type, bad) -> Any:
    try:
        settings = cls.from_dict(spec[key])
    except (KeyError, TypeError) as e:
        raise bad(f"input.{key} is missing or invalid ({e})") from None
    values = settings.to_dict().values()
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in values):
        raise bad(f"input.{key} values must be non-negative numbers, got {spec[key]}")
    return settings


def _check_files(folder: Path, files: dict) -> None:
    for fname, entry in files.items():
        path = folder / fname
        if fname not in PAYLOADS.values() or not isinstance(entry, dict):
            raise BundleError(f"{path}: not a known payload entry (expected one of {sorted(PAYLOADS.values())} "
                              f"with sha256 and bytes): {_REEXPORT}")
        if not path.is_file():
            raise BundleError(f"{path}: payload listed in {MANIFEST} is missing: {_REEXPORT}")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise BundleError(f"{path}: size mismatch (manifest says {entry.get('bytes')} bytes, file has "
                              f"{size}): the bundle is corrupt or was edited; {_REEXPORT}")
        digest = file_digest(path)["sha256"]
        if digest != entry.get("sha256"):
            raise BundleError(f"{path}: sha256 mismatch (manifest says {str(entry.get('sha256'))[:12]}..., "
                              f"file is {digest[:12]}...): the bundle is corrupt or was edited; {_REEXPORT}")


def _build(folder: Path, m: dict) -> Bundle:
    spec = m["input"]
    return Bundle(
        path=folder, manifest=m, name=m["name"], modality=m["modality"], labels=tuple(m["labels"]),
        input_name=spec["name"], input_shape=tuple(spec["shape"]), outputs=dict(m["outputs"]),
        embedding_dim=m["embedding_dim"],
        frontend=AudioFrontEnd.from_dict(spec["frontend"]) if "frontend" in spec else None,
        face=FaceInput.from_dict(spec["face"]) if "face" in spec else None,
        window_s=float(spec["window_s"]) if "window_s" in spec else None,
        mirror_average=m["modality"] == "face" and spec.get("mirror_average", False),
        zoom_views=tuple(float(z) for z in spec.get("zoom_views", ())) if m["modality"] == "face" else (),
        level_eyes=m["modality"] == "face" and spec.get("alignment", {}).get("level_eyes", False),
        detector=dict(spec["detector"]) if m["modality"] == "detector" else None,
        stats_input=spec.get("speaker_stats") if m["modality"] == "audio" else None,
    )
