"""Rebuild the demo input shipped in edge/assets/ (what `make demo` plays).

- portrait.jpg: NASA portrait of astronaut Eileen Collins (public domain, a work of the US
  government; the copy scikit-image ships as `skimage.data.astronaut()`).
- demo.wav: speech synthesized by espeak-ng (16 kHz mono).
- demo.mp4: the portrait with a slow zoom and pan, 15 fps, with demo.wav as its audio track.

Usage: python tools/make_demo_media.py SOURCE_PNG   (needs cv2, espeak-ng and ffmpeg)
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ASSETS = Path(__file__).resolve().parents[1] / "edge" / "assets"
TEXT = ("Hello! I am so happy to see you today. This is wonderful news. "
        "Honestly, I did not expect this at all.")
FPS, WIDTH, HEIGHT = 15, 480, 360


def speech(path: Path) -> float:
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us+f3", "-s", "150", "-w", str(raw), TEXT], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(path)], check=True)
    raw.unlink()
    return float(subprocess.run(["soxi", "-D", str(path)], check=True, capture_output=True,
                                text=True).stdout)


def frames(portrait: np.ndarray, seconds: float):
    n = int(np.ceil(seconds * FPS))
    h, w = portrait.shape[:2]
    for i in range(n):
        k = i / max(n - 1, 1)
        zoom = 1.0 + 0.15 * k
        cw, ch = int(w / zoom), int(w / zoom * HEIGHT / WIDTH)
        x0 = int((w - cw) * (0.5 + 0.1 * np.sin(2 * np.pi * k)))
        y0 = int((h - ch) * 0.25)
        yield cv2.resize(portrait[y0:y0 + ch, x0:x0 + cw], (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)


def main(source_png: str) -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    portrait = cv2.imread(source_png, cv2.IMREAD_COLOR)
    cv2.imwrite(str(ASSETS / "portrait.jpg"), portrait, [cv2.IMWRITE_JPEG_QUALITY, 85])
    seconds = speech(ASSETS / "demo.wav")
    with tempfile.TemporaryDirectory() as tmp:
        silent = Path(tmp) / "video.avi"
        writer = cv2.VideoWriter(str(silent), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (WIDTH, HEIGHT))
        for frame in frames(portrait, seconds):
            writer.write(frame)
        writer.release()
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(silent), "-i", str(ASSETS / "demo.wav"),
                        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "30", "-c:a", "aac", "-b:a", "48k",
                        "-shortest", str(ASSETS / "demo.mp4")], check=True)
    print(f"wrote {ASSETS}/portrait.jpg, demo.wav, demo.mp4 ({seconds:.2f} s)")


if __name__ == "__main__":
    main(sys.argv[1])
