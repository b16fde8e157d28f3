from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from edge.face import FaceCropper, FaceStage, HaarDetector, largest, square_crop_box, standardize_crops  # noqa: E402

PORTRAIT = Path(__file__).resolve().parents[1] / "edge" / "assets" / "portrait.jpg"


@pytest.fixture(scope="module")
def portrait():
    return cv2.imread(str(PORTRAIT))


class CountingDetector:
    def __init__(self, boxes):
        self.boxes, self.calls = boxes, 0

    def detect(self, gray):
        self.calls += 1
        return self.boxes


def on_the_portrait_face(box) -> bool:
    """The face of the NASA portrait is around (170-290, 60-190) in the 512 px image."""
    x, y, w, h = box
    return 140 < x + w / 2 < 300 and 60 < y + h / 2 < 200 and 60 < w < 200


def test_haar_finds_the_portrait_face(portrait):
    boxes = HaarDetector().detect(cv2.cvtColor(portrait, cv2.COLOR_BGR2GRAY))
    assert on_the_portrait_face(largest(boxes))


def test_stage_crops_a_standardized_face(portrait):
    stage = FaceStage(detect_every=1)
    box = stage.process(portrait)
    assert on_the_portrait_face(box)
    x, y, w, h = box
    assert x >= 0 and y >= 0 and x + w <= portrait.shape[1] and y + h <= portrait.shape[0]
    assert stage.input.shape == (1, 1, 48, 48) and stage.input.dtype == np.float32
    assert abs(stage.input.mean()) < 1e-3 and stage.input.std() == pytest.approx(1.0, abs=1e-3)


def test_detector_runs_every_nth_frame_and_box_is_reused(portrait):
    det = CountingDetector([(10, 20, 100, 100), (0, 0, 30, 30)])
    stage = FaceStage(det, detect_every=3)
    buffer = stage.input
    for _ in range(7):
        assert stage.process(portrait) == (10, 20, 100, 100)  # the largest box
    assert det.calls == 3  # frames 0, 3, 6
    assert stage.input is buffer  # the same preallocated buffer


def test_box_dropped_when_the_face_leaves(portrait):
    det = CountingDetector([(10, 20, 100, 100)])
    stage = FaceStage(det, detect_every=2, keep_frames=3)
    assert stage.process(portrait) == (10, 20, 100, 100)
    det.boxes = []
    seen = [stage.process(portrait) for _ in range(6)]
    assert seen[:2] == [(10, 20, 100, 100)] * 2 and seen[-1] is None


def test_blank_frame_has_no_face():
    assert FaceStage(detect_every=1).process(np.full((240, 320, 3), 127, np.uint8)) is None


def test_gray_frames_are_accepted(portrait):
    """A gray frame gives the face the BGR frame gives (within a pixel or two: the detector
    sees gray in all three channels)."""
    gray_box = FaceStage(detect_every=1).process(cv2.cvtColor(portrait, cv2.COLOR_BGR2GRAY))
    assert on_the_portrait_face(gray_box)
    assert np.abs(np.subtract(gray_box, FaceStage(detect_every=1).process(portrait))).max() <= 2


def test_square_crop_box_is_clipped_to_the_frame():
    assert square_crop_box((0, 0, 50, 30), (100, 200, 3), margin=0.1) == (0, 0, 60, 60)
    x, y, w, h = square_crop_box((180, 80, 40, 40), (100, 200, 3), margin=0.5)
    assert (w, h) == (80, 80) and x + w <= 200 and y + h <= 100


def test_batch_standardize_matches_the_live_cropper():
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (3, 48, 48), dtype=np.uint8)
    crops[2] = 100  # flat crop: the std floor keeps it finite
    batch = standardize_crops(crops)
    cropper = FaceCropper()
    for i in range(3):
        assert np.allclose(cropper.standardize(crops[i])[0, 0], batch[i], atol=1e-5)
    assert np.isfinite(batch).all()


@pytest.mark.parametrize("side", [119, 48, 30])
def test_numpy_crop_matches_cv2(portrait, side):
    """The crop is numpy (no cv2 in the default pipeline) and matches cv2.cvtColor + INTER_AREA
    resize (also when enlarging) within 0.05 standard deviations per pixel."""
    box = (170, 60, side, side)
    ours = FaceCropper().crop(portrait, box).copy()
    x, y, w, h = square_crop_box(box, portrait.shape, 0.1)
    gray = cv2.cvtColor(portrait, cv2.COLOR_BGR2GRAY)[y:y + h, x:x + w]
    ref = FaceCropper().standardize(cv2.resize(gray, (48, 48), interpolation=cv2.INTER_AREA))
    assert np.abs(ours - ref).max() < 0.05


@pytest.mark.parametrize("degrees", [14.0, -25.0])
def test_levelled_crop_matches_cv2_rotation(portrait, degrees):
    """level_eyes turns the crop about its centre by the eye line's angle: as cv2.cvtColor,
    cv2.warpAffine (INTER_LINEAR, BORDER_REPLICATE) about that centre, crop, INTER_AREA resize
    (within one gray level per pixel); eyes already level give the plain crop exactly."""
    box = (170, 60, 119, 119)
    t = np.radians(degrees)
    eyes = np.array([[200, 100], [200 + 50 * np.cos(t), 100 + 50 * np.sin(t)], [0, 0], [0, 0], [0, 0]], np.float32)
    cropper = FaceCropper(level_eyes=True)
    cropper.crop(portrait, box, eyes)
    x, y, w, h = square_crop_box(box, portrait.shape, 0.1)
    gray = cv2.cvtColor(portrait, cv2.COLOR_BGR2GRAY)
    turn = cv2.getRotationMatrix2D((x + w / 2 - 0.5, y + h / 2 - 0.5), degrees, 1.0)
    turned = cv2.warpAffine(gray, turn, gray.shape[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    ref = cv2.resize(turned[y:y + h, x:x + w], (48, 48), interpolation=cv2.INTER_AREA)
    assert np.abs(cropper.small - ref).max() <= 1.0
    plain = FaceCropper()
    plain.crop(portrait, box)
    level = eyes.copy()
    level[1, 1] = level[0, 1]
    cropper.crop(portrait, box, level)
    np.testing.assert_array_equal(cropper.small, plain.small)


@pytest.mark.parametrize("eyes", ["eyes", "None"])
def test_crop_allocates_no_frame_sized_buffer_per_call(eyes):
    """Neither crop holds a per-call float buffer of its 108 px square (46 KB; the plain crop's
    uint8 x float gray conversion buffered 131 KB, the levelled one's gathers 36 KB); what is
    left is the standardization's std() and its 48x48 float32 temporary (~12 KB)."""
    from alloc import allocated_by
    peak, held = allocated_by(
        "from edge.face import FaceCropper",
        "frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8); "
        "eyes = np.array([[120, 100], [170, 112], [0, 0], [0, 0], [0, 0]], np.float32); "
        "c = FaceCropper(level_eyes=True)",
        f"c.crop(frame, (100, 60, 90, 90), {eyes})", steps=200)
    assert peak < 16 * 1024 and held < 2048, (peak, held)


def test_face_alignment_tool_compares_plain_and_levelled_crops(tmp_path):
    """tools/face_alignment.py (the figures in docs/students.md) on the first FER2013 validation
    faces and CREMA-D frames: both crops scored on the same faces, discordant pairs counted."""
    import json
    import subprocess
    import sys
    pytest.importorskip("onnxruntime")
    root = Path(__file__).resolve().parents[1]
    data = root.parent / "shared" / "data"
    if not (data / "fer2013" / "train").is_dir():
        pytest.skip("../shared/data/fer2013 not present")
    out = tmp_path / "align.json"
    proc = subprocess.run([sys.executable, str(root / "tools" / "face_alignment.py"), "--data", str(data),
                           "--limit", "12", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    for sets in report.values():
        for r in sets.values():
            assert r["frames"] == 12 and 0 < r["with_face"] <= 12
            for crop in ("plain", "level_eyes"):
                assert 0 <= r[crop]["accuracy"] <= 1
            assert r["only_plain_right"] + r["only_level_eyes_right"] <= r["with_face"]
