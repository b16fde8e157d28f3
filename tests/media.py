"""Test media made on the spot: WAV files in any encoding, espeak-ng speech, face videos
(with or without a speech track), an MJPEG-over-HTTP camera server on 127.0.0.1, and a
PulseAudio virtual microphone. Helpers skip the calling test when a system tool is missing.

Nothing here downloads anything; the face is the public-domain portrait shipped in
edge/assets (a face drawn with cv2 when it is absent).
"""
from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

PORTRAIT = Path(__file__).resolve().parents[1] / "edge" / "assets" / "portrait.jpg"
SHARED_DATA = Path(os.environ.get("AVEMO_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def shared_data(corpus: str) -> Path:
    """A research corpus folder under ../shared/data (or $AVEMO_DATA); skip when absent."""
    folder = SHARED_DATA / corpus
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"{folder} not present (research corpora are never shipped)")
    return folder


def need(*tools: str) -> None:
    """Skip the calling test unless every command-line tool is on PATH."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt install)")


def write_wav(path: Path, x: np.ndarray, rate: int, bits: int = 16, floating: bool = False) -> Path:
    """Write float samples [n] or [n, channels] in [-1, 1] as a PCM int or IEEE float WAV."""
    x = np.asarray(x, np.float64)
    x = x if x.ndim == 2 else x[:, None]
    data = _encode(x, bits, floating).tobytes()
    channels, block = x.shape[1], x.shape[1] * bits // 8
    fmt = struct.pack("<HHIIHH", 3 if floating else 1, channels, rate, rate * block, block, bits)
    riff = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data
    Path(path).write_bytes(b"RIFF" + struct.pack("<I", len(riff)) + riff)
    return Path(path)


def _encode(x: np.ndarray, bits: int, floating: bool) -> np.ndarray:
    if floating:
        return x.astype("<f4" if bits == 32 else "<f8")
    if bits == 8:
        return np.clip(np.round(x * 128 + 128), 0, 255).astype(np.uint8)
    scale = 2.0 ** (bits - 1)
    ints = np.clip(np.round(x * scale), -scale, scale - 1).astype("<i4")
    if bits == 24:
        return ints.view(np.uint8).reshape(*ints.shape, 4)[..., :3]
    return ints.astype(f"<i{bits // 8}")


NOISES = ("white", "pink", "brown", "hum50", "hum100", "fan", "band", "silence")


def noise(kind: str, seconds: float, dbfs: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """Non-speech, float32 [seconds * rate] at an RMS level of `dbfs`, clipped to [-1, 1]:
    "white", "pink" (power ~ 1/f), "brown" (~ 1/f^2), "hum50" / "hum100" (mains hum: a
    fundamental and four harmonics), "fan" (noise band-passed 80-400 Hz, its amplitude wobbling
    +-50 % at 0.7 Hz), "band" (noise band-passed 150-600 Hz), "silence" (zeros)."""
    n, rng = round(seconds * rate), np.random.default_rng(seed)
    t = np.arange(n) / rate
    if kind == "silence":
        return np.zeros(n, np.float32)
    if kind.startswith("hum"):
        f0 = float(kind[3:])
        y = sum(a * np.sin(2 * np.pi * f0 * h * t + h) for h, a in enumerate((1, .5, .3, .2, .1), 1))
    else:
        spectrum, freq = np.fft.rfft(rng.standard_normal(n)), np.fft.rfftfreq(n, 1 / rate)
        f = np.maximum(freq, 1.0)
        shape = {"white": np.ones_like(f), "pink": f ** -0.5, "brown": 1 / f,
                 "fan": (f > 80) / (1 + (f / 400) ** 2), "band": (f > 150) & (f < 600)}[kind]
        y = np.fft.irfft(spectrum * shape, n)
        if kind == "fan":
            y = y * (1 + 0.5 * np.sin(2 * np.pi * 0.7 * t))
    y = y / np.sqrt(np.mean(y**2)) * 10 ** (dbfs / 20)
    return np.clip(y, -1, 1).astype(np.float32)


def add_noise(speech: np.ndarray, kind: str, snr_db: float, seed: int = 0) -> np.ndarray:
    """`speech` (16 kHz) plus `kind` noise `snr_db` below its active level: the mean power of
    its 10 ms hops within 30 dB of the loudest, so leading and trailing silence do not count."""
    hops = speech[: len(speech) // 160 * 160].astype(np.float64).reshape(-1, 160)
    power = np.mean(hops**2, axis=1)
    active = float(np.mean(power[power > power.max() * 1e-3]))
    level = 10 * np.log10(active) - snr_db
    return (speech + noise(kind, len(speech) / 16000, level, seed)).astype(np.float32)


def gate_windows(x: np.ndarray, window: int = 32000, hop: int = 8000) -> Iterator[np.ndarray]:
    """The pipeline's windows (2 s every 0.5 s at 16 kHz), zeros before the stream starts."""
    padded = np.concatenate([np.zeros(window, np.float32), x])
    for end in range(window + hop, len(padded) + 1, hop):
        yield padded[end - window:end]


def energy_voiced(window: np.ndarray, dbfs: float = -45.0) -> bool:
    """The energy-only gate this project had before the voicing gate: at least 10 % of the
    window's 10 ms hops above `dbfs`. The reference for "a window with something loud in it"."""
    power = np.mean(window.reshape(-1, 160).astype(np.float64) ** 2, axis=1)
    return np.count_nonzero(power > 10 ** (dbfs / 10)) >= 0.1 * len(power)


def pass_rates(gate, clips: list[np.ndarray], snr_db: float = 10.0, seed: int = 0) -> dict[str, float]:
    """Of the windows of clean `clips` that `energy_voiced` passes, the share `gate(window)`
    passes: clean, and with white and pink noise `snr_db` below the speech."""
    rates = {}
    for name, kind in (("clean", None), ("white", "white"), ("pink", "pink")):
        noisy = (x if kind is None else add_noise(x, kind, snr_db, seed) for x in clips)
        hits = [gate(w) for x, y in zip(clips, noisy)
                for w, c in zip(gate_windows(y), gate_windows(x)) if energy_voiced(c)]
        rates[name] = sum(hits) / len(hits)
    return rates


def speech_wav(path: Path, text: str = "Hello. I am really happy to see you today, what a surprise!",
               rate: int | None = None) -> Path:
    """Speech synthesized with espeak-ng (22.05 kHz mono), resampled with ffmpeg if `rate`."""
    need("espeak-ng")
    path = Path(path)
    raw = path if rate is None else path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), text], check=True, capture_output=True)
    if rate is not None:
        need("ffmpeg")
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(raw), "-ar", str(rate), str(path)],
                       check=True, capture_output=True)
    return path


def portrait(size: tuple[int, int] = (240, 320)) -> np.ndarray:
    """A BGR face image (H, W) = size: the shipped portrait, letterboxed, or a drawn face."""
    import cv2
    from edge.video import fit_frame
    out = np.zeros((*size, 3), np.uint8)
    img = cv2.imread(str(PORTRAIT)) if PORTRAIT.exists() else _drawn_face()
    fit_frame(img, out)
    return out


def _drawn_face() -> np.ndarray:
    import cv2
    img = np.full((256, 256, 3), 200, np.uint8)
    cv2.ellipse(img, (128, 128), (70, 95), 0, 0, 360, (140, 170, 215), -1)
    for x in (100, 156):
        cv2.ellipse(img, (x, 110), (14, 7), 0, 0, 360, (255, 255, 255), -1)
        cv2.circle(img, (x, 110), 5, (40, 30, 20), -1)
        cv2.line(img, (x - 16, 92), (x + 14, 90), (40, 40, 60), 3)
    cv2.line(img, (128, 115), (122, 150), (90, 110, 160), 2)
    cv2.ellipse(img, (128, 170), (25, 10), 0, 0, 180, (60, 60, 160), 3)
    return img


def video_frames(n: int, size: tuple[int, int] = (240, 320)) -> Iterator[np.ndarray]:
    """`n` frames of the portrait drifting a few pixels, so consecutive frames differ."""
    base = portrait(size)
    for i in range(n):
        yield np.roll(base, (i % 7) - 3, axis=1)


def face_video(path: Path, seconds: float = 2.0, fps: float = 15.0, size: tuple[int, int] = (240, 320),
               audio: Path | None = None) -> Path:
    """An mp4 of the moving portrait (mp4v); with `audio`, that file muxed in as AAC by ffmpeg."""
    import cv2
    path = Path(path)
    silent = path if audio is None else path.with_suffix(".silent.mp4")
    writer = cv2.VideoWriter(str(silent), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size[1], size[0]))
    for frame in video_frames(round(seconds * fps), size):
        writer.write(frame)
    writer.release()
    if audio is not None:
        need("ffmpeg")
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(silent), "-i", str(audio),
                        "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", str(path)],
                       check=True, capture_output=True)
    return path


class MjpegServer:
    """A camera on http://127.0.0.1:PORT/stream.mjpg: multipart/x-mixed-replace JPEG frames.

    `stop()` closes every open stream (the client sees the camera die); `start()` again
    serves on the same port.
    """

    def __init__(self, frames: list[np.ndarray], fps: float = 15.0, port: int = 0) -> None:
        import cv2
        self.jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames]
        self.fps, self.port = fps, port
        self._server: http.server.ThreadingHTTPServer | None = None
        self._running = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> "MjpegServer":
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._running.set()
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._running.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        time.sleep(2.0 / self.fps)  # let the streaming handlers notice and close

    def _handler(self) -> type:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                with contextlib.suppress(OSError):
                    owner._stream(self.wfile)

            def log_message(self, *args) -> None:
                pass

        return Handler

    def _stream(self, wfile) -> None:
        i = 0
        while self._running.is_set():
            jpg = self.jpegs[i % len(self.jpegs)]
            wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg))
            wfile.write(jpg + b"\r\n")
            wfile.flush()
            i += 1
            time.sleep(1.0 / self.fps)

    def __enter__(self) -> "MjpegServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class VirtualMic:
    """A running PulseAudio null sink `vsink` whose monitor is the default source `vmic`."""

    device = "pulse"
    """The sounddevice/PortAudio input device that records the virtual microphone."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        """Environment for subprocesses that must use this PulseAudio server."""

    def play(self, wav: Path, wait: bool = True) -> subprocess.Popen:
        """Play a sound file into the virtual microphone (paplay)."""
        proc = subprocess.Popen(["paplay", "-d", "vsink", str(wav)], env=self.env)
        if wait:
            proc.wait(timeout=120)
        return proc


@contextlib.contextmanager
def virtual_mic(rate: int = 16000, channels: int = 1) -> Iterator[VirtualMic]:
    """Start a private PulseAudio server with a virtual microphone; stop it on exit.

    The server lives in its own runtime folder, so parallel tests do not share it. While
    inside, PULSE_SERVER points this process (and sounddevice, re-initialized) at it.
    """
    need("pulseaudio", "pactl", "paplay")
    with tempfile.TemporaryDirectory(prefix="avemo-pulse-") as tmp:
        sock = f"{tmp}/native"
        env = {**os.environ, "HOME": tmp, "XDG_RUNTIME_DIR": tmp, "PULSE_SERVER": f"unix:{sock}"}
        server = _start_pulse(env, sock, rate, channels)
        saved = os.environ.get("PULSE_SERVER")
        try:
            os.environ["PULSE_SERVER"] = env["PULSE_SERVER"]
            _reinit_sounddevice()
            yield VirtualMic(env)
        finally:
            _restore_env("PULSE_SERVER", saved)
            server.terminate()
            server.wait(timeout=5)
            _reinit_sounddevice()


def _start_pulse(env: dict[str, str], sock: str, rate: int, channels: int) -> subprocess.Popen:
    cmd = ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit",
           "-L", f"module-native-protocol-unix socket={sock} auth-anonymous=1",
           "-L", f"module-null-sink sink_name=vsink rate={rate} channels={channels}",
           "-L", "module-remap-source master=vsink.monitor source_name=vmic"]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(50):
        if subprocess.run(["pactl", "set-default-source", "vmic"], env=env,
                          capture_output=True).returncode == 0:
            return server
        time.sleep(0.1)
    server.terminate()
    server.wait(timeout=5)
    pytest.skip("PulseAudio did not start (virtual microphone unavailable)")


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _reinit_sounddevice() -> None:
    """Make PortAudio re-scan devices (it only looks at start-up)."""
    with contextlib.suppress(ImportError, OSError):
        import sounddevice as sd
        sd._terminate()
        sd._initialize()
