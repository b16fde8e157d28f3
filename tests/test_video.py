"""Frame conversion, file replay, and CameraSource on a video file and a live HTTP MJPEG stream."""
from __future__ import annotations

import csv
import time

import numpy as np
import pytest

from edge.errors import DeviceError, MediaError
from edge.ring import FrameRing
from edge.video import CameraSource, VideoFileReader, fit_frame, list_cameras

from media import MjpegServer, face_video, shared_data, speech_wav, video_frames

cv2 = pytest.importorskip("cv2")
SHAPE = (240, 320, 3)


def wait_until(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.02)
    return cond()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return face_video(tmp_path_factory.mktemp("video") / "face.mp4", seconds=2.0, fps=15.0)


def test_fit_frame_converts_gray_bgra_and_uint16():
    out = np.zeros(SHAPE, np.uint8)
    gray = np.tile(np.arange(320, dtype=np.uint8), (240, 1))
    assert fit_frame(gray, out) and (out[..., 0] == gray).all() and (out[..., 2] == gray).all()
    assert fit_frame(gray[..., None], out) and (out[..., 1] == gray).all()
    bgra = np.dstack([np.full((240, 320), v, np.uint8) for v in (10, 20, 30, 255)])
    assert fit_frame(bgra, out) and (out.reshape(-1, 3) == [10, 20, 30]).all()
    assert fit_frame(np.full(SHAPE, 0x1234, np.uint16), out) and (out == 0x12).all()


def test_fit_frame_letterboxes_other_sizes():
    out = np.full(SHAPE, 9, np.uint8)
    wide = np.full((100, 400, 3), 200, np.uint8)  # 4:1 into 4:3 -> bars above and below
    assert fit_frame(wide, out)
    assert (out[:80] == 0).all() and (out[160:] == 0).all() and (out[80:160] == 200).all()
    tall = np.full((480, 320, 3), 50, np.uint8)  # 2:3 -> 160 px wide, bars left and right
    assert fit_frame(tall, out)
    assert (out[:, :80] == 0).all() and (out[:, 80:240] == 50).all() and (out[:, 240:] == 0).all()


def test_fit_frame_empty_and_bad_layouts():
    out = np.zeros(SHAPE, np.uint8)
    assert not fit_frame(None, out)
    assert not fit_frame(np.zeros((0, 0, 3), np.uint8), out)
    with pytest.raises(MediaError, match="float32"):
        fit_frame(np.zeros((4, 4, 3), np.float32), out)
    with pytest.raises(MediaError, match="not gray, BGR or BGRA"):
        fit_frame(np.zeros((4, 4, 2), np.uint8), out)


def test_reader_properties_and_frames(clip):
    reader = VideoFileReader(clip)
    assert reader.fps == 15.0 and reader.n_frames == 30 and reader.frame_shape == SHAPE
    frames = list(reader)
    assert len(frames) == 30
    times = np.array([t for t, _ in frames])
    np.testing.assert_allclose(times, np.arange(30) / 15.0, atol=1e-3)
    for (_, got), want in zip(frames, video_frames(30)):
        assert np.abs(got.astype(int) - want).mean() < 8  # lossy mp4v, same picture


def test_reader_frame_at_seeks_sequentially_and_back(clip):
    reader, out = VideoFileReader(clip), np.zeros(SHAPE, np.uint8)
    frames = [f for _, f in reader]
    for t, index in [(0.0, 0), (0.05, 0), (0.5, 7), (1.0, 15), (1.99, 29), (0.2, 3)]:
        assert reader.frame_at(t, out)
        assert (out == frames[index]).all(), f"t={t}"
    assert not reader.frame_at(2.0, out)  # after the last frame's display time
    assert not reader.frame_at(-0.1, out)
    reader.close()


def test_reader_on_a_real_cremad_flv():
    cremad = shared_data("cremad_fixture")
    with open(cremad / "labels.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["has_video"] == "yes")
    reader = VideoFileReader(cremad / row["path_video"])
    assert reader.frame_shape == (int(row["height"]), int(row["width"]), 3)
    assert reader.n_frames == int(row["n_frames"]) and abs(reader.fps - float(row["fps"])) < 0.01
    assert sum(1 for _ in reader) == reader.n_frames


def test_reader_bad_files(tmp_path):
    need_audio = speech_wav(tmp_path / "s.wav", "hi")
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(bytes(range(256)) * 40)
    good = face_video(tmp_path / "ok.mp4", seconds=1.0).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(good[: len(good) // 3])
    for name in ("missing.mp4", "empty.mp4", "junk.mp4", "cut.mp4", need_audio.name):
        with pytest.raises(MediaError, match=name.replace(".", r"\.")):
            VideoFileReader(tmp_path / name)


def test_camera_on_a_video_file_paces_and_finishes(clip):
    ring = FrameRing(4, (120, 160, 3))  # half size: every frame is resized into the ring
    cam = CameraSource(ring, str(clip), fps_cap=10.0)
    start = time.monotonic()
    cam.start()
    assert cam.alive and cam.frame_shape == (120, 160, 3)
    assert wait_until(lambda: cam.finished, 10.0)
    elapsed = time.monotonic() - start
    cam.stop()
    assert 1.7 < elapsed < 4.0  # real-time pace: the clip is 2 s long
    assert 15 <= ring.written <= 21  # 15 fps file capped to 10 fps
    assert not cam.alive and cam.events[-1].startswith("camera finished")
    out = np.zeros((120, 160, 3), np.uint8)
    ring.read_newest(out)
    assert out.mean() > 20


@pytest.mark.parametrize("spec", [9, "9", "/nonexistent/video.mp4", "http://127.0.0.1:9/none.mjpg"])
def test_camera_that_cannot_open_is_a_device_error(spec):
    with pytest.raises(DeviceError, match="camera"):
        CameraSource(FrameRing(2, SHAPE), spec).start()


def test_camera_http_stream_lost_and_back():
    frames = list(video_frames(8))
    frames[3] = cv2.cvtColor(frames[3], cv2.COLOR_BGR2GRAY)  # a grayscale JPEG in the stream
    server = MjpegServer(frames, fps=20.0).start()
    ring = FrameRing(4, (120, 160, 3))
    cam = CameraSource(ring, server.url, fps_cap=10.0, reconnect_s=0.2)
    try:
        cam.start()
        assert wait_until(lambda: ring.written >= 5, 5.0)
        server.stop()
        assert wait_until(lambda: not cam.alive, 8.0)
        assert any(e.startswith("camera lost") for e in cam.events)
        stalled = ring.written
        server.start()  # same port
        assert wait_until(lambda: cam.alive, 8.0)
        assert cam.events[-1] == f"camera back: {server.url}"
        assert wait_until(lambda: ring.written >= stalled + 5, 5.0)
    finally:
        cam.stop()
        server.stop()
    assert not cam.alive and cam.bad_frames == 0


def test_list_cameras_reports_openable_indices():
    cams = list_cameras(max_index=2)
    assert isinstance(cams, list)
    for cam in cams:
        assert set(cam) == {"index", "width", "height", "fps"} and cam["width"] > 0


def test_default_replay_run_never_imports_cv2():
    """A default `run` (ffmpeg child for the frames, the CNN detector, numpy crop) keeps OpenCV
    out of the process; `--capture opencv --detector haar` still uses it."""
    import subprocess
    import sys
    from pathlib import Path
    demo = Path(__file__).resolve().parents[1] / "edge" / "assets" / "demo.mp4"
    code = ("import sys, runpy; sys.argv = ['avemo-edge', 'run', '--video', sys.argv[1], '--duration', '2'{}]\n"
            "try:\n    runpy.run_module('edge.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('cv2 imported' if 'cv2' in sys.modules else 'no cv2', file=sys.stderr)")
    default = subprocess.run([sys.executable, "-c", code.format(""), str(demo)], capture_output=True, text=True,
                             timeout=120)
    assert default.returncode == 0 and default.stderr.splitlines()[-1] == "no cv2", default.stderr
    assert '"box"' in default.stdout
    opencv = subprocess.run([sys.executable, "-c", code.format(", '--capture', 'opencv', '--detector', 'haar'"),
                             str(demo)], capture_output=True, text=True, timeout=120)
    assert opencv.stderr.splitlines()[-1] == "cv2 imported", opencv.stderr
