"""The Python API: `edge.open(...)` -> a `Stream` of `Result`s, one per hop.

    import edge
    with edge.open(mic=True, camera=0, profile="rpi4") as stream:
        for result in stream:
            print(result.fused)

Sources: a live microphone (`mic=True`, a device index or name) and camera (`camera=0`, a
file path or an rtsp/http URL) filled by background threads, or a recording replayed as
fast as it computes (`audio="talk.wav"`, `video="talk.mp4"`; `realtime=True` paces it).
The stream owns the sources, the rings and the clock; `edge/pipeline.py` computes each hop.
A result's `t` is the end of the audio window it describes: k * hop in a replay, the audio
captured so far (samples / 16 kHz, the microphone's clock) live; seconds since start when
there is no audio.
A camera that dies mid-run leaves the stream running on audio (face null) and reports
"camera lost" / "camera back" in the result's `events`.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from edge.errors import ConfigError, MediaError
from edge.face import FaceDetector
from edge.pipeline import Pipeline, Result
from edge.profiles import Profile, load_profile
from edge.ring import AudioRing, FrameRing
from edge.settings import AUDIO


@dataclass(frozen=True)
class Replay:
    """A recording to replay: its 16 kHz mono audio (or None) and its video reader (or None)."""

    wave: np.ndarray | None
    video: object | None

    @property
    def seconds(self) -> float:
        audio_s = len(self.wave) / AUDIO.sample_rate if self.wave is not None else 0.0
        video_s = self.video.n_frames / self.video.fps if self.video is not None else 0.0
        return max(audio_s, video_s)


def _replay(audio: str | None, video: str | None, capture: str) -> Replay:
    from edge.audio import read_audio, read_video_audio
    from edge.video import VideoFileReader
    reader = VideoFileReader(video, capture) if video else None
    wave = read_audio(audio) if audio else (read_video_audio(video) if video else None)
    if wave is not None and len(wave) == 0:
        raise MediaError(f"{audio or video}: no audio samples")
    return Replay(wave, reader)


class Stream:
    """Sources + rings + clock around a `Pipeline`. Use as a context manager and iterate."""

    def __init__(self, *, mic: bool | int | str | None = None, camera: int | str | None = None,
                 audio: str | None = None, video: str | None = None, profile: str | Profile = "x86",
                 backend: str = "auto", hop: float | None = None, duration: float | None = None,
                 audio_model: str | None = "audio", face_model: str | None = "face",
                 realtime: bool = False, detector: str | FaceDetector = "cnn",
                 capture: str = "ffmpeg") -> None:
        live, replay = mic not in (None, False) or camera is not None, audio is not None or video is not None
        if live == replay:
            raise ConfigError("give live sources (mic/camera) or a recording (audio/video file), not both or neither")
        self.profile = profile if isinstance(profile, Profile) else load_profile(profile)
        self.duration = duration
        self.realtime = realtime or live
        self.capture = capture
        self.replay = _replay(audio, video, capture) if replay else None
        has_audio = (self.replay.wave is not None) if replay else mic not in (None, False)
        has_video = (self.replay.video is not None) if replay else camera is not None
        self.pipeline = Pipeline(self.profile, audio_model if has_audio else None,
                                 face_model if has_video else None, backend, hop, detector)
        self._mic_spec, self._camera_spec = mic, camera
        self.audio_ring = AudioRing(int(self.profile.audio.ring_s * AUDIO.sample_rate)) if has_audio else None
        self.frame_ring = None
        self.mic = self.camera = None
        self._events: list[str] = []

    # -- setup / teardown -------------------------------------------------------------
    def __enter__(self) -> "Stream":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        if self.replay is not None:
            if self.replay.video is not None:
                self._frame_ring(self.replay.video.frame_shape)
            return
        if self._camera_spec is not None:
            self._start_camera()
        if self.audio_ring is not None:
            from edge.audio import MicSource
            device = None if self._mic_spec is True else self._mic_spec
            self.mic = MicSource(self.audio_ring, device=device)
            self.mic.start()

    def _frame_ring(self, shape: tuple[int, int, int]) -> FrameRing:
        self.frame_ring = FrameRing(self.profile.video.ring_frames, shape)
        self.pipeline.use_frame_shape(shape)
        return self.frame_ring

    def _start_camera(self) -> None:
        from edge.video import CameraSource
        v = self.profile.video
        ring = self._frame_ring((v.height, v.width, 3))
        self.camera = CameraSource(ring, self._camera_spec, fps_cap=v.fps_cap, capture=self.capture)
        self.camera.start()

    def close(self) -> None:
        for source in (self.mic, self.camera):
            if source is not None:
                source.stop()
        self.mic = self.camera = None

    # -- loop ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Result]:
        return self._replay_hops() if self.replay is not None else self._live_hops()

    def _hop_times(self, end: float | None) -> Iterator[float]:
        hop, k = self.pipeline.hop_s, 1
        while end is None or k * hop <= end + 1e-9:
            yield k * hop
            k += 1

    def _replay_hops(self) -> Iterator[Result]:
        wave, video = self.replay.wave, self.replay.video
        end = min(self.replay.seconds, self.duration or float("inf"))
        pushed, begin = 0, time.monotonic()
        for t in self._hop_times(end):
            if wave is not None:
                upto = min(len(wave), int(round(t * AUDIO.sample_rate)))
                self.audio_ring.write(wave[pushed:upto])
                pushed = upto
            if video is not None and video.frame_at(t, self.pipeline.frame):
                self.frame_ring.write(self.pipeline.frame, t)
            if self.realtime:
                time.sleep(max(0.0, begin + t - time.monotonic()))
            yield self._finish(self.pipeline.step(t, self.audio_ring, self.frame_ring))

    def _live_hops(self) -> Iterator[Result]:
        begin = time.monotonic()
        for due in self._hop_times(self.duration):
            time.sleep(max(0.0, begin + due - time.monotonic()))
            now = time.monotonic()
            yield self._finish(self.pipeline.step(self._live_time(now - begin), self.audio_ring,
                                                  self._live_frames(), frame_clock=now))

    def _live_time(self, wall_s: float) -> float:
        """A live hop's stream time. With a microphone: the audio captured so far on the mic's
        own clock (samples / rate), so `t` names the end of the window the hop reads however
        late the scheduler wakes or the capture blocks arrive. Else the wall clock since start."""
        if self.audio_ring is None:
            return wall_s
        return self.audio_ring.written / AUDIO.sample_rate

    def _live_frames(self) -> FrameRing | None:
        if self.camera is None:
            return None
        while self.camera.events:
            self._events.append(self.camera.events.popleft())
        return self.frame_ring if self.camera.alive else None

    def _finish(self, result: Result) -> Result:
        result.counters = self.counters()
        result.events, self._events = self._events, []
        return result

    def counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.audio_ring is not None:
            out.update(audio_overruns=self.audio_ring.overruns, audio_underruns=self.audio_ring.underruns)
        if self.mic is not None:
            out["mic_overflows"] = self.mic.overflows
        if self.frame_ring is not None:
            out["frames_dropped"] = self.frame_ring.dropped
        return out


def open(**kwargs) -> Stream:  # noqa: A001 - `edge.open(...)` reads like the built-in on purpose
    """Open a stream; see `Stream` for the arguments. Use with `with`."""
    return Stream(**kwargs)
