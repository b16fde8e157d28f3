"""Media decoding: audio to 16 kHz mono float32, images to gray, video frames to face crops.

In:  file paths (wav/flac via soundfile; mp3/flv/mp4/avi audio via an ffmpeg subprocess;
     images and video frames via OpenCV).
Out: float32 [T] waveforms in [-1, 1] at `edge.settings.AUDIO.sample_rate`; uint8 gray
     [size, size] crops. Unreadable media raise `MediaError` naming the file and the fix.
Face crops: OpenCV's frontal-face Haar cascade, largest face, `FACE.margin` added on each
side, squared, resized; a frame with no face falls back to the last box found in the clip,
else to the centred square.
"""
from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np

from edge.errors import MediaError
from edge.settings import AUDIO, FACE

SOUNDFILE_EXT = (".wav", ".flac", ".ogg")


def decode_audio(path: str | Path, sample_rate: int = AUDIO.sample_rate) -> np.ndarray:
    """Mono float32 waveform of `path` at `sample_rate`."""
    path = Path(path)
    if path.suffix.lower() in SOUNDFILE_EXT:
        wave, rate = _read_soundfile(path)
        return resample(wave, rate, sample_rate)
    return _ffmpeg_audio(path, sample_rate)


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as err:
        raise MediaError(f"{path}: unreadable audio ({err}); re-encode it as 16-bit PCM wav") from None
    return data.mean(axis=1).astype(np.float32), int(rate)


def _ffmpeg_audio(path: Path, sample_rate: int) -> np.ndarray:
    if shutil.which("ffmpeg") is None:
        raise MediaError(f"{path}: decoding {path.suffix} needs ffmpeg on PATH (apt install ffmpeg)")
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-vn", "-ac", "1", "-ar", str(sample_rate),
           "-f", "f32le", "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no audio stream"]
        raise MediaError(f"{path}: ffmpeg cannot decode audio ({msg[0]}); check the file has an audio track")
    return np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited FFT resampling (exact for periodic signals); identity when rates match."""
    if rate == target or len(wave) == 0:
        return np.asarray(wave, dtype=np.float32)
    n_out = int(round(len(wave) * target / rate))
    spec = np.fft.rfft(wave.astype(np.float64))
    n_bins = n_out // 2 + 1
    out = np.zeros(n_bins, dtype=np.complex128)
    keep = min(n_bins, len(spec))
    out[:keep] = spec[:keep]
    return (np.fft.irfft(out, n_out) * (n_out / len(wave))).astype(np.float32)


def read_gray(path: str | Path) -> np.ndarray:
    """uint8 gray image [H, W]."""
    import cv2
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise MediaError(f"{path}: unreadable image; use png/jpg/tiff")
    return img


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    import cv2
    if img.shape == (size, size):
        return img
    interp = cv2.INTER_AREA if min(img.shape) > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def read_video_frames(path: str | Path, count: int) -> list[np.ndarray]:
    """`count` gray frames evenly spaced over the clip (read sequentially: robust for flv/avi)."""
    import cv2
    cap = cv2.VideoCapture(str(path))
    frames = []
    ok, frame = cap.read()
    while ok:
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
        ok, frame = cap.read()
    cap.release()
    if not frames:
        raise MediaError(f"{path}: no video frames could be decoded; re-encode it as mp4 (H.264)")
    picks = np.linspace(0, len(frames) - 1, count + 2)[1:-1].round().astype(int) if count > 1 else [len(frames) // 2]
    return [frames[i] for i in picks]


@lru_cache(maxsize=1)
def _cascade():
    import cv2
    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
    if cascade.empty():
        raise MediaError("OpenCV Haar cascade missing; install opencv-python-headless<5 (avemo-edge[capture])")
    return cascade


def face_box(gray: np.ndarray) -> tuple[int, int, int, int] | None:
    """Largest detected face (x, y, w, h), or None."""
    min_side = max(24, min(gray.shape) // 8)
    faces = _cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    if len(faces) == 0:
        return None
    x, y, w, h = max(faces, key=lambda b: b[2] * b[3])
    return int(x), int(y), int(w), int(h)


def crop_square(gray: np.ndarray, box: tuple[int, int, int, int] | None, size: int, margin: float = FACE.margin) -> np.ndarray:
    """The box grown by `margin` per side, squared, clipped to the frame, resized to size x size."""
    h_img, w_img = gray.shape
    if box is None:
        side = min(h_img, w_img)
        box = ((w_img - side) // 2, (h_img - side) // 2, side, side)
    x, y, w, h = box
    side = int(round(max(w, h) * (1 + 2 * margin)))
    cx, cy = x + w / 2, y + h / 2
    x0 = int(np.clip(round(cx - side / 2), 0, max(0, w_img - side)))
    y0 = int(np.clip(round(cy - side / 2), 0, max(0, h_img - side)))
    crop = gray[y0:y0 + side, x0:x0 + side]
    return resize_square(crop, size)


def video_face_crops(path: str | Path, frames: int, size: int) -> np.ndarray:
    """uint8 [frames, size, size] face crops from a video clip."""
    crops, last = [], None
    for gray in read_video_frames(path, frames):
        last = face_box(gray) or last
        crops.append(crop_square(gray, last, size))
    return np.stack(crops)
