"""Video through an ffmpeg child process: raw BGR frames over a pipe, no OpenCV in the process.

In:  a camera index (V4L2 /dev/videoN), a video file, or an rtsp/http URL.
Out: `FfmpegCapture.read(out)` fills the caller's uint8 [H, W, 3] BGR buffer with the next
     frame, scaled by ffmpeg to (W, H) and letterboxed with black (as `video.fit_frame`),
     reading from the pipe straight into `out` (no per-frame allocation). `probe(path)` gives
     a file's (fps, frame count, (h, w, 3)) from ffprobe.

The child is `ffmpeg -i SPEC -f rawvideo -pix_fmt bgr24 -`; a file opened with
`realtime=True` is read at its own pace (`-re`), as a camera would deliver it. A read that
gets no byte for `timeout_s` (a stalled stream), a child that exits (end of file, camera
unplugged, server gone) or a short frame ends the capture: `read` returns (False, why) and
the caller reopens it. The child's RSS is `rss_kb()` (reported by tools/bench.py).
"""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

from edge.errors import AvemoError, MediaError

OPEN_TIMEOUT_S = 5.0


def _exe(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise AvemoError(f"video capture needs {name}, which is not installed: apt install ffmpeg "
                         f"(or use --capture opencv with pip install 'avemo-edge[capture]')")
    return exe


def _input_args(spec: int | str, realtime: bool) -> list[str]:
    if isinstance(spec, int):
        device = f"/dev/video{spec}" if sys.platform.startswith("linux") else str(spec)
        fmt = {"linux": "v4l2", "darwin": "avfoundation"}.get(sys.platform, "dshow")
        return ["-f", fmt, "-i", device]
    if "://" in spec:
        timeout = ["-timeout" if spec.startswith("rtsp") else "-rw_timeout", str(int(OPEN_TIMEOUT_S * 1e6))]
        return [*timeout, "-i", spec]
    return (["-re"] if realtime else []) + ["-i", spec]


class FfmpegCapture:
    """One ffmpeg child decoding `spec` into frames of `shape` (h, w, 3)."""

    def __init__(self, spec: int | str, shape: tuple[int, int, int], realtime: bool = False,
                 timeout_s: float = OPEN_TIMEOUT_S) -> None:
        h, w = shape[:2]
        scale = (f"scale={w}:{h}:force_original_aspect_ratio=decrease:flags=area,"
                 f"pad={w}:{h}:(ow-iw)/2:(oh-ih)/2:color=black")
        cmd = [_exe("ffmpeg"), "-nostdin", "-hide_banner", "-loglevel", "error",
               "-threads", "1", "-filter_threads", "1",  # one decoder thread: demo replay child 66 -> 60 MB
               *_input_args(spec, realtime),
               "-map", "0:v:0", "-vf", scale, "-fps_mode", "passthrough",  # one output frame per decoded frame
               "-f", "rawvideo", "-pix_fmt", "bgr24", "-"]
        self.spec, self.shape, self.timeout_s = spec, tuple(shape), timeout_s
        # its own session: a Ctrl-C in the terminal stops the loop, which then stops the child;
        # if this process dies, the child's next write gets EPIPE and it exits
        # (stderr is not read: a long stream's decoder warnings would fill the pipe and stall it)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, bufsize=0, start_new_session=True)
        self._fd = self.proc.stdout.fileno()

    def read(self, out: np.ndarray) -> tuple[bool, str]:
        """The next frame into `out`; (False, why) when the stream ended or stalled."""
        view, got = memoryview(out.reshape(-1)), 0
        while got < view.nbytes:
            ready, _, _ = select.select([self._fd], [], [], self.timeout_s)
            if not ready:
                return False, f"no frame for {self.timeout_s:g} s"
            n = os.readv(self._fd, [view[got:]])
            if n == 0:
                return False, self._exit_reason()
            got += n
        return True, ""

    def _exit_reason(self) -> str:
        code = self.proc.poll()
        self.release()
        return "end of stream" if code in (0, None) else f"end of stream (ffmpeg exited with code {code})"

    def rss_kb(self, field: str = "VmRSS") -> int | None:
        """The child's resident set size (kB; field "VmHWM": its peak), None once it exited."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
        except (OSError, StopIteration):
            return None

    def release(self) -> None:
        """Stop the child (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()  # a decoder writing to a pipe has nothing to flush: no graceful stop
            self.proc.wait()


def open_capture(spec: int | str, shape: tuple[int, int, int], realtime: bool = False,
                 first: np.ndarray | None = None) -> FfmpegCapture | None:
    """A capture that delivered its first frame (into `first`), or None when it does not open."""
    cap = FfmpegCapture(spec, shape, realtime)
    ok, _ = cap.read(first if first is not None else np.empty(shape, np.uint8))
    if ok:
        return cap
    cap.release()
    return None


def probe(path: Path) -> tuple[float, int, tuple[int, int, int]]:
    """(fps, frame count, (h, w, 3)) of a video file's first video stream; MediaError when unreadable."""
    cmd = [_exe("ffprobe"), "-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries",
           "stream=width,height,avg_frame_rate,r_frame_rate,nb_read_packets", "-of", "json", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    streams = json.loads(proc.stdout or "{}").get("streams", []) if proc.returncode == 0 else []
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["failed"])[-1][:120]
        raise MediaError(f"{path}: cannot open video (unsupported format or corrupt file; ffprobe: {why})")
    if not streams or not streams[0].get("width") or not int(streams[0].get("nb_read_packets", 0)):
        raise MediaError(f"{path}: contains no readable video frames")
    s = streams[0]
    fps = next((float(Fraction(r)) for r in (s.get("avg_frame_rate"), s.get("r_frame_rate"))
                if r and r != "0/0" and float(Fraction(r)) > 0), 0.0)
    return fps, int(s["nb_read_packets"]), (int(s["height"]), int(s["width"]), 3)
