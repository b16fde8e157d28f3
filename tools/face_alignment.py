"""Does levelling the eyes before the crop help the shipped face student? Measured on real faces.

    python tools/face_alignment.py [--data ../shared/data] [--tilt 20] [--limit N] [--json out.json]

Face sets (real faces with an emotion label):
  fer-val     FER2013 validation faces (distill.corpora.fer_items(root)["val"], the student's own
              held-out 5 %), each 48 px face upscaled x4 (bicubic) and framed by 64 px of
              repeated edge pixels (a 320x320 frame the detector sees whole)
  cremad      every frame of the CREMA-D fixture clips (480x360 video, labels from the clip)
Each set upright and turned by +-`--tilt` degrees (alternately, about the frame centre, edges
repeated): a tilted head is where levelling can matter.

Per set: the shipped face_detector (onnxruntime) finds the face and its landmarks; the face
bundle's crop (its manifest's FaceInput) is taken plain and eye-levelled from the same box and
landmarks; the face student (onnxruntime, mirror-averaged as the pipeline runs it) answers
both. Reported: frames, frames with a face, accuracy and UAR of each crop on those frames, and
the discordant pairs (faces only one crop gets right: McNemar's b and c).
Needs opencv-python-headless and onnxruntime; ../shared for the data.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.bundle import load_bundle  # noqa: E402
from edge.detector import CnnDetector  # noqa: E402
from edge.face import FaceCropper, largest  # noqa: E402
from edge.metrics import classification_report  # noqa: E402
from edge.pipeline import Model  # noqa: E402
from edge.video import VideoFileReader  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
UPSCALE, BORDER = 4, 64


def _cv2():
    import cv2
    return cv2


def turned(frame: np.ndarray, degrees: float) -> np.ndarray:
    cv2 = _cv2()
    h, w = frame.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(frame, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def fer_frames(data: Path) -> Iterator[tuple[np.ndarray, str]]:
    """FER2013 validation faces as BGR frames (upscaled, edge-framed), with their labels."""
    from distill.corpora import fer_items
    cv2 = _cv2()
    for item in fer_items(data)["val"]:
        gray = cv2.imread(str(item.image), cv2.IMREAD_GRAYSCALE)
        big = cv2.resize(gray, None, fx=UPSCALE, fy=UPSCALE, interpolation=cv2.INTER_CUBIC)
        framed = cv2.copyMakeBorder(big, BORDER, BORDER, BORDER, BORDER, cv2.BORDER_REPLICATE)
        yield cv2.cvtColor(framed, cv2.COLOR_GRAY2BGR), item.label


def cremad_frames(data: Path) -> Iterator[tuple[np.ndarray, str]]:
    """Every frame of the CREMA-D fixture clips, with the clip's label."""
    import csv
    folder = data / "cremad_fixture"
    with open(folder / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("path_video")]
    for row in rows:
        with VideoFileReader(folder / row["path_video"]) as reader:
            for _, frame in reader:
                yield frame, row["label"]


class Comparison:
    """One detector, one face student, the two crops; `add(frame, label)` scores a frame."""

    def __init__(self, face: str = "face") -> None:
        bundle = load_bundle(face)
        self.detector = CnnDetector(backend="onnxruntime")
        self.model = Model(bundle, "onnxruntime", ("onnxruntime", "numpy"), 1)
        self.crops = {"plain": FaceCropper(bundle.face), "level_eyes": FaceCropper(bundle.face, level_eyes=True)}
        self.truth: list[str] = []
        self.predicted: dict[str, list[str]] = {k: [] for k in self.crops}
        self.frames = 0

    def add(self, frame: np.ndarray, label: str) -> None:
        self.frames += 1
        boxes = self.detector.detect(frame)
        box = largest(boxes)
        if box is None or label not in self.model.labels:
            return
        marks = self.detector.landmarks[boxes.index(box)]
        self.truth.append(label)
        for name, cropper in self.crops.items():
            probs = self.model(cropper.crop(frame, box, marks))
            self.predicted[name].append(self.model.labels[int(np.argmax(probs))])

    def report(self) -> dict:
        out = {"frames": self.frames, "with_face": len(self.truth)}
        for name, pred in self.predicted.items():
            r = classification_report(self.truth, pred, list(self.model.labels))
            out[name] = {"accuracy": r["accuracy"], "uar": r["uar"]}
        right = {k: np.array(p) == np.array(self.truth) for k, p in self.predicted.items()}
        out["only_plain_right"] = int(np.sum(right["plain"] & ~right["level_eyes"]))
        out["only_level_eyes_right"] = int(np.sum(right["level_eyes"] & ~right["plain"]))
        return out


def evaluate(frames: Iterator[tuple[np.ndarray, str]], tilt: float, limit: int | None = None) -> dict:
    """{"upright": report, "tilted": report} over one set (its first `limit` frames)."""
    upright, tilted = Comparison(), Comparison()
    for i, (frame, label) in enumerate(itertools.islice(frames, limit)):
        upright.add(frame, label)
        tilted.add(turned(frame, tilt if i % 2 else -tilt), label)
    return {"upright": upright.report(), f"tilted +-{tilt:g}": tilted.report()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED, help="folder with fer2013/ and cremad_fixture/")
    parser.add_argument("--tilt", type=float, default=20.0, help="degrees the tilted copies are turned")
    parser.add_argument("--limit", type=int, default=None, help="only the first N frames of each set")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if not (args.data / "fer2013" / "train").is_dir():
        parser.error(f"{args.data}: no fer2013/train folder: pass --data with the shared data")
    report = {"fer-val": evaluate(fer_frames(args.data), args.tilt, args.limit)}
    if (args.data / "cremad_fixture").is_dir():
        report["cremad"] = evaluate(cremad_frames(args.data), args.tilt, args.limit)
    for name, sets in report.items():
        for kind, r in sets.items():
            print(f"{name} {kind}: face in {r['with_face']}/{r['frames']}; plain accuracy {r['plain']['accuracy']:.4f} "
                  f"UAR {r['plain']['uar']:.4f}; level_eyes accuracy {r['level_eyes']['accuracy']:.4f} "
                  f"UAR {r['level_eyes']['uar']:.4f}; only plain right {r['only_plain_right']}, "
                  f"only level_eyes right {r['only_level_eyes_right']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
