"""Face-detection quality on real faces and on pictures without a face, detector by detector.

Face sets (every frame must hold exactly one face):
  cremad      CREMA-D fixture clips (../shared/data/cremad_fixture/video), every 10th frame
  demo        the demo clip (edge/assets/demo.mp4), every 4th frame
  demo+25     the same frames rotated by +25 degrees (about the frame centre, black corners)
  demo-25     rotated by -25 degrees
  demo-small  the same frames shrunk to 0.4 of their size, pasted into a black 640x480 frame
No-face set: scikit-image's data pictures that show no person (pip install scikit-image).

Reported per detector and set: frames, frames with a face found (rate), frames with more than
one box; on the no-face pictures, pictures with any box (false positives).

Usage: python tools/detector_quality.py [--detectors yunet,yunet-numpy,yunet-litert,haar]
                                       [--bundle DIR] [--json out.json]
(`--bundle`: another detector bundle, e.g. an int8 build from `python -m distill.detector --int8`.)
Needs opencv-python-headless (reading the clips, rotating, Haar).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.face import HaarDetector  # noqa: E402
from edge.detector import CnnDetector  # noqa: E402
from edge.video import VideoFileReader  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
DEMO = ROOT / "edge" / "assets" / "demo.mp4"
NO_FACE = ("brick", "cell", "chelsea", "chessboard_GRAY", "chessboard_RGB", "clock_motion", "coffee", "coins",
           "color", "grass", "gravel", "horse", "hubble_deep_field", "ihc", "logo", "microaneurysms", "moon",
           "motorcycle_left", "motorcycle_right", "page", "phantom", "retina", "rocket", "text")
"""scikit-image data pictures without a person (astronaut, camera and lfw_subset show people)."""
SMALL_SCALE = 0.4
DETECTORS: dict[str, Callable[[str], object]] = {
    "yunet": lambda bundle: CnnDetector(bundle, backend="onnxruntime"),
    "yunet-numpy": lambda bundle: CnnDetector(bundle, backend="numpy"),
    "yunet-litert": lambda bundle: CnnDetector(bundle, backend="litert", order=("litert",)),
    "haar": lambda bundle: HaarDetector(),
}


def _frames(path: Path, every: int) -> Iterator[np.ndarray]:
    with VideoFileReader(path) as reader:
        for i, (_, frame) in enumerate(reader):
            if i % every == 0:
                yield frame


def rotated(frame: np.ndarray, degrees: float) -> np.ndarray:
    import cv2
    h, w = frame.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(frame, m, (w, h), flags=cv2.INTER_LINEAR)


def small(frame: np.ndarray, scale: float = SMALL_SCALE, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """`frame` shrunk by `scale` and pasted at the centre of a black frame of `size` (h, w)."""
    import cv2
    out = np.zeros(size + frame.shape[2:], np.uint8)
    shrunk = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    y0, x0 = (size[0] - shrunk.shape[0]) // 2, (size[1] - shrunk.shape[1]) // 2
    out[y0:y0 + shrunk.shape[0], x0:x0 + shrunk.shape[1]] = shrunk
    return out


def face_sets(cremad_every: int = 10, demo_every: int = 4) -> dict[str, list[np.ndarray]]:
    """Frames that each show one face, by set name (cremad only when ../shared is there)."""
    demo = list(_frames(DEMO, demo_every))
    sets = {"demo": demo, "demo+25": [rotated(f, 25) for f in demo], "demo-25": [rotated(f, -25) for f in demo],
            "demo-small": [small(f) for f in demo]}
    clips = sorted((SHARED / "cremad_fixture" / "video").glob("*.flv"))
    if clips:
        sets = {"cremad": [f for clip in clips for f in _frames(clip, cremad_every)], **sets}
    return sets


def no_face_pictures() -> list[np.ndarray]:
    """scikit-image's pictures without a person, as BGR uint8 (ImportError without scikit-image)."""
    import cv2
    import skimage.data
    folder = Path(skimage.data.data_dir)
    pictures = []
    for name in NO_FACE:
        path = next(folder.glob(f"{name}.*"))
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is not None:
            pictures.append(img)
    return pictures


def evaluate(detector, sets: dict[str, list[np.ndarray]], negatives: list[np.ndarray]) -> dict:
    """{set: {frames, found, rate, multiple}} and {"no_face": {pictures, false_positives}}."""
    report = {}
    for name, frames in sets.items():
        counts = [len(detector.detect(f)) for f in frames]
        found = sum(c > 0 for c in counts)
        report[name] = {"frames": len(frames), "found": found, "rate": found / max(1, len(frames)),
                        "multiple": sum(c > 1 for c in counts)}
    report["no_face"] = {"pictures": len(negatives),
                         "false_positives": sum(len(detector.detect(p)) > 0 for p in negatives)}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", default="yunet,haar", help=f"comma-separated, of {', '.join(DETECTORS)}")
    parser.add_argument("--bundle", default="face_detector", help="detector bundle (name or folder)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    names = args.detectors.split(",")
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        parser.error(f"unknown detector {unknown[0]!r}: use {', '.join(DETECTORS)}")
    sets, negatives = face_sets(), no_face_pictures()
    report = {name: evaluate(DETECTORS[name](args.bundle), sets, negatives) for name in names}
    for name, r in report.items():
        parts = [f"{s} {v['found']}/{v['frames']}" for s, v in r.items() if s != "no_face"]
        print(f"{name}: " + ", ".join(parts) + f"; no face: {r['no_face']['false_positives']}"
              f"/{r['no_face']['pictures']} false positives")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
