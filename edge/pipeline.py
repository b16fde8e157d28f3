"""One hop of the pipeline: rings -> VAD -> audio student, newest frame -> face -> face
student, both -> fusion -> a `Result`.

`Pipeline.__init__` is setup (load bundles, open backend sessions, allocate every window,
crop and probability buffer once); `Pipeline.step(t, audio_ring, frame_ring)` is the loop
body. Nothing here knows where the audio or frames come from: `edge/stream.py` owns the
sources and the clock. Buffers in a `Result` are copied out into plain lists, so a result
stays valid after the next hop.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np

from edge.backends import open_session
from edge.bundle import Bundle, load_bundle
from edge.errors import ConfigError, in_range
from edge.face import FaceDetector, FaceStage, make_detector
from edge.features import VoiceGate, window_samples
from edge.fusion import CommonSpace, Fusion
from edge.profiles import Profile
from edge.ring import AudioRing, FrameRing
from edge.settings import AUDIO
from edge.speaker import Adaptation
from edge.views import views_of

MIN_AUDIO_S = 0.5
"""Shortest window the audio student is run on (at the start of a stream)."""
HOP_RANGE_S = (0.001, 60.0)
"""Seconds between results: 1 ms (a replay scanned finely, as tests/test_live.py does) to a minute."""


def check_hop(hop_s: object) -> float:
    """`hop_s` as float seconds, or a ConfigError naming --hop and HOP_RANGE_S."""
    return float(in_range("hop (--hop)", hop_s, *HOP_RANGE_S, unit=" of seconds"))


@dataclass
class Result:
    """One hop's output; `to_json()` is the JSON line the CLI prints (schema in README)."""

    t: float
    audio: dict | None
    face: dict | None
    fused: dict | None
    latency_ms: dict[str, float]
    counters: dict[str, int]
    events: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"t": self.t, "audio": self.audio, "face": self.face, "fused": self.fused,
                "latency_ms": self.latency_ms, "counters": self.counters, "events": self.events}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


def top_label(part: dict | None) -> str:
    """"label p" for one modality's part of a result, "-" when it has no probabilities."""
    if not part or not part.get("probs"):
        return "-"
    return f"{part['label']} {max(part['probs'].values()):.2f}"


def _probs_dict(labels: tuple[str, ...], probs: np.ndarray) -> dict[str, float]:
    return {label: round(float(p), 4) for label, p in zip(labels, probs)}


class Model:
    """A bundle, its backend session and preallocated softmax outputs.

    A face bundle answers the mean of the softmax (and of the embedding) over the test-time
    views it asks for (edge/views.py): with `mirror_average` the crop and its mirror image,
    with `zoom_views` also the crop's centre enlarged, and their mirror images. Each view is
    one model call. Mirror averaging lifted held-out accuracy and ships; zoom views are an
    export option (docs/students.md "Zoom views")."""

    def __init__(self, bundle: Bundle, backend: str, backend_order: tuple[str, ...], threads: int) -> None:
        self.bundle = bundle
        self.session = open_session(bundle, backend=backend, order=backend_order, threads=threads)
        self.labels = bundle.labels
        self.probs = np.zeros(len(bundle.labels), np.float32)
        self.embedding: np.ndarray | None = None
        self._views = views_of(bundle)
        self._view_probs = np.zeros_like(self.probs)
        self._mean_embedding = np.zeros(bundle.embedding_dim, np.float32)
        self._feeds: dict[str, np.ndarray | None] = {bundle.input_name: None}

    def __call__(self, x: np.ndarray, stats: np.ndarray | None = None) -> np.ndarray:
        """Probabilities for input `x` (and, for a bundle with a statistics input, `stats`)."""
        if stats is not None:
            self._feeds[self.bundle.stats_input] = stats
        if self._views is None:
            self.embedding = self._run(x, self.probs)
        else:
            self._answer_views(x)
        return self.probs

    def _answer_views(self, x: np.ndarray) -> None:
        """The mean answer (probs, embedding) over the views of crop `x`."""
        views = self._views(x)
        self.probs.fill(0.0)
        self._mean_embedding.fill(0.0)
        has_embedding = False
        for view in views:
            embedding = self._run(view, self._view_probs)
            self.probs += self._view_probs
            if embedding is not None:
                self._mean_embedding += embedding
                has_embedding = True
        self.probs *= 1.0 / len(views)
        self._mean_embedding *= 1.0 / len(views)
        self.embedding = self._mean_embedding if has_embedding else None

    def _run(self, x: np.ndarray, probs: np.ndarray) -> np.ndarray | None:
        """Softmax of the logits for `x` into `probs`; returns the embedding (or None)."""
        self._feeds[self.bundle.input_name] = x
        out = self.session.run(self._feeds)
        logits = out["logits"].reshape(-1)
        np.subtract(logits, logits.max(), out=probs)
        np.exp(probs, out=probs)
        probs /= probs.sum()
        return out["embedding"].reshape(-1) if "embedding" in out else None


def common_space(audio: Bundle | None, face: Bundle | None, labels: tuple[str, ...]) -> CommonSpace | None:
    """The teacher's class embeddings, when both bundles carry the same ones."""
    spaces = [b.manifest.get("common_space") for b in (audio, face) if b is not None]
    if not spaces or any(s is None for s in spaces) or any(s != spaces[0] for s in spaces):
        return None
    table = dict(zip(spaces[0]["labels"], spaces[0]["class_embeddings"]))
    if not all(label in table for label in labels):
        return None
    return CommonSpace(np.asarray([table[label] for label in labels], np.float32),
                       float(spaces[0].get("temperature", 1.0)))


class Pipeline:
    def __init__(self, profile: Profile, audio_model: str | None = "audio",
                 face_model: str | None = "face", backend: str = "auto",
                 hop_s: float | None = None, detector: str | FaceDetector = "cnn", adapt: bool = True) -> None:
        if audio_model is None and face_model is None:
            raise ConfigError("nothing to run: give an audio model, a face model or both")
        self.profile = profile
        self.hop_s = check_hop(hop_s if hop_s is not None else profile.audio.hop_s)
        threads, order = profile.device.threads, profile.runtime.backends
        self.audio = Model(load_bundle(audio_model), backend, order, threads) if audio_model else None
        self.face = Model(load_bundle(face_model), backend, order, threads) if face_model else None
        self._setup_audio(adapt)
        self._setup_face(detector, backend)
        labels = (self.audio.labels if self.audio else (), self.face.labels if self.face else ())
        self.fusion = Fusion(*labels, audio_weight=profile.fusion.audio_weight,
                             face_weight=profile.fusion.face_weight,
                             half_life_s=profile.fusion.half_life_s)
        self.fusion.common = common_space(self.audio and self.audio.bundle,
                                          self.face and self.face.bundle, self.fusion.labels)
        self.latency: dict[str, float] = {}

    def _setup_audio(self, adapt: bool) -> None:
        """The window the audio bundle was trained on (its manifest's input.window_s), and the
        speaker statistics when the bundle takes them (`adapt` False: the window's own only)."""
        window_s = self.audio.bundle.window_s if self.audio else 1.0
        if window_s >= self.profile.audio.ring_s:
            raise ConfigError(f"profile {self.profile.name}: audio.ring_s = {self.profile.audio.ring_s} s cannot hold "
                              f"the audio model's {window_s} s window; set ring_s > {window_s}")
        self.window = np.zeros((1, window_samples(window_s)), np.float32)
        self.gate = VoiceGate(self.window.shape[1], threshold_dbfs=self.profile.audio.vad_dbfs)
        self.min_samples = int(MIN_AUDIO_S * AUDIO.sample_rate)
        a = self.profile.audio
        self.adaptation = Adaptation(self.window.shape[1], a.adapt_min_s, a.adapt_reset_s, adapt) \
            if self.audio and self.audio.bundle.stats_input else None

    def reset_speaker(self) -> None:
        """Forget the running speaker statistics (a new person is talking); a no-op for an
        audio model without a statistics input."""
        if self.adaptation is not None:
            self.adaptation.reset()

    def _setup_face(self, detector: str | FaceDetector, backend: str) -> None:
        """`detector`: "cnn", "haar", a detector bundle path (make_detector) or a detector object."""
        v = self.profile.video
        self.frame = np.zeros((v.height, v.width, 3), np.uint8)
        self.face_stage = None
        if self.face:
            if isinstance(detector, str):
                detector = make_detector(detector, backend, self.profile.device.threads, self.profile.runtime.backends)
            bundle = self.face.bundle  # the crop the student was trained on: its manifest's, not a global
            self.face_stage = FaceStage(detector, detect_every=v.detect_every, spec=bundle.face,
                                        level_eyes=bundle.level_eyes)
        self.max_frame_age_s = max(1.0, 2.0 * self.hop_s)

    def use_frame_shape(self, shape: tuple[int, int, int]) -> None:
        """Size the frame buffer to the source's frames (called once by the stream)."""
        if self.frame.shape != shape:
            self.frame = np.zeros(shape, np.uint8)

    def _timed(self, stage: str, start: float) -> float:
        now = time.perf_counter()
        self.latency[stage] = round((now - start) * 1e3, 3)
        return now

    def _audio_step(self, ring: AudioRing, until: int, t: float) -> dict:
        start = time.perf_counter()
        try:
            real = ring.read_latest(self.window[0], until)
        except ValueError:  # the producer lapped that window (a torn read, or a hop a ring late)
            real = ring.read_latest(self.window[0])  # the newest one instead; an overrun is counted
        start = self._timed("ring", start)
        speech = self.gate.voiced(self.window[0])  # run on every hop: level_dbfs describes this window
        voiced = speech and real >= self.min_samples
        start = self._timed("vad", start)
        result = {"voiced": voiced, "level_dbfs": round(self.gate.level_dbfs, 1), "label": None, "probs": None}
        n = min(real, self.window.shape[1]) // AUDIO.hop * AUDIO.hop
        x = self.window[:, self.window.shape[1] - n:]
        stats = self.adaptation.update(x[0], until, t, voiced) if self.adaptation is not None else None
        if voiced:
            probs = self.audio(x, stats)
            result.update(label=self.audio.labels[int(np.argmax(probs))],
                          probs=_probs_dict(self.audio.labels, probs))
        self._timed("audio", start)
        return result

    def _face_step(self, now: float, ring: FrameRing) -> dict | None:
        start = time.perf_counter()
        newest = ring.read_newest(self.frame)
        if newest is None or now - newest[0] > self.max_frame_age_s:
            return None
        box = self.face_stage.process(self.frame)
        start = self._timed("face_detect", start)
        if box is None:
            return None
        probs = self.face(self.face_stage.input)
        self._timed("face", start)
        return {"box": [int(v) for v in box], "label": self.face.labels[int(np.argmax(probs))],
                "probs": _probs_dict(self.face.labels, probs)}

    def step(self, t: float, audio_ring: AudioRing | None, frame_ring: FrameRing | None,
             frame_clock: float | None = None) -> Result:
        """Run one hop at stream time `t` (seconds) on what the rings hold now.

        The audio window is the one that ends at `t`: the samples before sample
        round(t * sample rate) of the ring, or before its newest when it holds fewer.
        `frame_clock` is "now" on the clock that stamps the frames (the camera thread uses
        time.monotonic()); a replay stamps frames with stream time and leaves it None.
        A frame older than `max_frame_age_s` is stale: the face is reported as null.
        """
        self.latency = {}
        begin = time.perf_counter()
        audio = self._audio_step(audio_ring, int(round(t * AUDIO.sample_rate)), t) \
            if self.audio and audio_ring is not None else None
        now = t if frame_clock is None else frame_clock
        face = self._face_step(now, frame_ring) if self.face and frame_ring is not None else None
        start = time.perf_counter()
        audio_probs = self.audio.probs if audio and audio["voiced"] else None
        face_probs = self.face.probs if face else None
        fused = self.fusion.update(t, audio_probs, face_probs,
                                   self.audio.embedding if audio_probs is not None else None,
                                   self.face.embedding if face_probs is not None else None)
        fused_out = None if fused is None else {"label": self.fusion.label,
                                                "probs": _probs_dict(self.fusion.labels, fused)}
        self._timed("fusion", start)
        self.latency["total"] = round((time.perf_counter() - begin) * 1e3, 3)
        return Result(t=round(t, 3), audio=audio, face=face, fused=fused_out,
                      latency_ms=dict(self.latency), counters={})
