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
`serve="8080"` (or "0.0.0.0:8080") also serves a live web view of the results
(`edge/serve.py`; its address, with the token it needs, is `stream.server.url`).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from edge.errors import ConfigError, MediaError, in_range
from edge.face import FaceDetector
from edge.pipeline import Pipeline, Result, check_hop
from edge.profiles import Profile, load_profile
from edge.ring import AudioRing, FrameRing
from edge.settings import AUDIO


MAX_DEVICE_INDEX = 255
"""Largest microphone / camera index (PortAudio, V4L2)."""
MAX_DURATION_S = 365 * 24 * 3600.0
"""Longest --duration (a year); without --duration a live run goes on until stopped."""


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
                 capture: str = "ffmpeg", serve: str | int | None = None, adapt: bool = True) -> None:
        live, replay = mic not in (None, False) or camera is not None, audio is not None or video is not None
        if live == replay:
            raise ConfigError("give live sources (mic/camera) or a recording (audio/video file), not both or neither")
        self.profile = profile if isinstance(profile, Profile) else load_profile(profile)
        hop = check_hop(hop if hop is not None else self.profile.audio.hop_s)
        self.duration = None if duration is None else float(in_range(
            "duration (--duration)", duration, hop, MAX_DURATION_S, unit=" of seconds (one hop at least)"))
        for name, device in (("mic", mic), ("camera", camera)):
            if isinstance(device, int) and not isinstance(device, bool):
                in_range(f"{name} (--{name}) index", device, 0, MAX_DEVICE_INDEX, whole=True)
        self.realtime = realtime or live
        self.capture = capture
        self.replay = _replay(audio, video, capture) if replay else None
        has_audio = (self.replay.wave is not None) if replay else mic not in (None, False)
        has_video = (self.replay.video is not None) if replay else camera is not None
        self.pipeline = Pipeline(self.profile, audio_model if has_audio else None,
                                 face_model if has_video else None, backend, hop, detector, adapt)
        self._mic_spec, self._camera_spec = mic, camera
        self.audio_ring = AudioRing(int(self.profile.audio.ring_s * AUDIO.sample_rate)) if has_audio else None
        self.frame_ring = None
        self.mic = self.camera = None
        self._events: list[str] = []
        self.server = None
        if serve is not None:
            from edge.serve import LiveServer
            self.server = LiveServer(serve, self.profile.serve.max_clients)

    def reset_speaker(self) -> None:
        """Forget the speaker statistics the audio model adapts to (a new person is talking)."""
        self.pipeline.reset_speaker()

    # -- setup / teardown -------------------------------------------------------------
    def __enter__(self) -> "Stream":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        if self.replay is None:
            self._start_live()
        elif self.replay.video is not None:
            self._frame_ring(self.replay.video.frame_shape)
        if self.server is not None:
            try:
                self.server.start()
            except ConfigError:
                self.close()
                raise

    def _start_live(self) -> None:
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
        for source in (self.mic, self.camera, self.server):
            if source is not None:
                source.stop()
        self.mic = self.camera = None

    # -- loop ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Result]:
        return self._replay_hops() if self.replay is not None else self._live_hops()

    def _replay_hops(self) -> Iterator[Result]:
        end = min(self.replay.seconds, self.duration or float("inf"))
        for result in replay_steps(self.pipeline, self.audio_ring, self.replay.wave, end,
                                   self.frame_ring, self.replay.video, self.realtime):
            yield self._finish(result)

    def _live_hops(self) -> Iterator[Result]:
        begin = time.monotonic()
        for due in hop_times(self.pipeline.hop_s, self.duration):
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
        if self.server is not None:
            self.server.publish(result, self.pipeline.frame if self.frame_ring is not None else None)
        return result

    def counters(self) -> dict[str, int]:
        """What went wrong so far, per source (README, "Output"): every value only grows."""
        out: dict[str, int] = {}
        if self.audio_ring is not None:
            out.update(audio_overruns=self.audio_ring.overruns, audio_underruns=self.audio_ring.underruns,
                       audio_torn=self.audio_ring.torn)
        if self.mic is not None:
            out.update(mic_overflows=self.mic.overflows, mic_errors=self.mic.errors)
        if self.frame_ring is not None:
            out.update(frames_dropped=self.frame_ring.dropped, frames_torn=self.frame_ring.torn)
        if self.camera is not None:
            out["frames_bad"] = self.camera.bad_frames
        return out


def hop_times(hop: float, end: float | None) -> Iterator[float]:
    """hop, 2 hop, ... up to `end` seconds (for ever when None)."""
    k = 1
    while end is None or k * hop <= end + 1e-9:
        yield k * hop
        k += 1


def replay_steps(pipeline: Pipeline, audio_ring: AudioRing | None, wave: np.ndarray | None, end: float,
                 frame_ring: FrameRing | None = None, video=None, realtime: bool = False) -> Iterator[Result]:
    """The hops of a replay: at each hop time t, the audio up to t is in the ring (and the video
    frame at t in the frame ring), then `pipeline.step(t)`. `run --audio/--video` and
    `avemo-edge eval` both answer a recording with this loop."""
    pushed, begin = 0, time.monotonic()
    for t in hop_times(pipeline.hop_s, end):
        if wave is not None:
            upto = min(len(wave), int(round(t * AUDIO.sample_rate)))
            audio_ring.write(wave[pushed:upto])
            pushed = upto
        if video is not None and video.frame_at(t, pipeline.frame):
            frame_ring.write(pipeline.frame, t)
        if realtime:
            time.sleep(max(0.0, begin + t - time.monotonic()))
        yield pipeline.step(t, audio_ring, frame_ring)


def open(**kwargs) -> Stream:  # noqa: A001 - `edge.open(...)` reads like the built-in on purpose
    """Open a stream; see `Stream` for the arguments. Use with `with`."""
    return Stream(**kwargs)
