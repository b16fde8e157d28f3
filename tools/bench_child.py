"""Fresh-process scenarios for `tools/bench.py`, and the demo replay driver both share.

    python tools/bench_child.py SCENARIO [--audio-model DIR] [--face-model DIR]
                                [--backend NAME] [--profile NAME] [--peer NAME]

In:  one scenario name: `baseline` (Python + numpy), `import` (the runtime only),
     `detector` (the demo video opened, one frame through the default face stage: the CNN
     detector bundle), `haar` (the same with OpenCV's Haar cascade),
     `backend` (both models loaded on --backend and run once each), `pipeline` (the whole
     pipeline replaying the demo recording once), `camera` (the face pipeline on a live
     MJPEG stream of the demo, served by a separate ffmpeg process, for --seconds), `peer` (one peer from
     tools/bench_peers.py, set up and run once) or `soak` (the demo looped in real time
     for --seconds, VmRSS sampled every second).
Out: one JSON line on stdout: {"scenario", "rss_mb" (VmHWM, peak resident set of this
     process), "rss_now_mb" (VmRSS)}, and for `pipeline` and `camera` "decoder_rss_mb" (the
     ffmpeg decoder child's peak, VmHWM). Exit code 2 with a one-line message on bad input.

This module imports only the standard library, numpy and `edge` at module level, so a
scenario's peak RSS counts what it loads and nothing bench.py itself needs.
`replay_hops` is the driver: it feeds the demo audio and video (looped, at the profile's
fps) into the pipeline's rings and calls `Pipeline.step` once per hop.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edge.settings import AUDIO

ROOT = Path(__file__).resolve().parents[1]
DEMO_VIDEO = ROOT / "edge" / "assets" / "demo.mp4"
DEMO_AUDIO = ROOT / "edge" / "assets" / "demo.wav"
SCENARIOS = ("baseline", "import", "detector", "haar", "backend", "pipeline", "camera", "peer", "soak")
SOAK_WARMUP_S = 300.0
"""RSS samples of the first SOAK_WARMUP_S seconds (at most a quarter of a soak) are warm-up."""
AUDIO_S = 1.0
"""The audio window the pipeline figures use (1 s, as the issue's real-time factor asks)."""


def proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status ("VmHWM", "VmRSS") in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {field}: RSS figures need Linux")


def bench_profile(name: str):
    """The profile, loaded on first use (a scenario's RSS counts only what it loads)."""
    from edge.profiles import load_profile
    return load_profile(name)


class DemoMedia:
    """The demo recording, looped: audio samples and video frames at any stream time."""

    def __init__(self, video: Path = DEMO_VIDEO, audio: Path = DEMO_AUDIO) -> None:
        from edge.audio import read_audio
        from edge.video import VideoFileReader
        self.wave = read_audio(audio)
        self.video = VideoFileReader(video)
        self.seconds = min(len(self.wave) / AUDIO.sample_rate, self.video.duration)
        self.frame = np.zeros(self.video.frame_shape, np.uint8)

    def samples(self, start: int, stop: int) -> Iterator[np.ndarray]:
        """Samples [start, stop) of the looped waveform, in at most two slices per loop."""
        n = len(self.wave)
        while start < stop:
            i = start % n
            chunk = self.wave[i:i + min(stop - start, n - i)]
            yield chunk
            start += len(chunk)

    def frame_at(self, t: float) -> bool:
        return self.video.frame_at(t % self.seconds, self.frame)


def replay_hops(pipeline, media: DemoMedia, seconds: float | None, realtime: bool = False) -> Iterator:
    """Run the pipeline over the looped demo for `seconds` of stream time (None: forever).

    Audio is pushed up to each hop's time; frames are written at the profile's fps cap.
    Yields each hop's `Result`."""
    from edge.ring import AudioRing, FrameRing
    profile, sr = pipeline.profile, AUDIO.sample_rate
    audio_ring = AudioRing(int(profile.audio.ring_s * sr))
    frame_ring = FrameRing(profile.video.ring_frames, media.video.frame_shape)
    pipeline.use_frame_shape(media.video.frame_shape)
    frame_dt, pushed, frames, k, begin = 1.0 / profile.video.fps_cap, 0, 0, 1, time.monotonic()
    while seconds is None or k * pipeline.hop_s <= seconds + 1e-9:
        t = k * pipeline.hop_s
        for chunk in media.samples(pushed, int(round(t * sr))):
            audio_ring.write(chunk)
        pushed = int(round(t * sr))
        while frames * frame_dt <= t:
            if media.frame_at(frames * frame_dt):
                frame_ring.write(media.frame, frames * frame_dt)
            frames += 1
        if realtime:
            time.sleep(max(0.0, begin + t - time.monotonic()))
        yield pipeline.step(t, audio_ring, frame_ring)
        k += 1


def _sessions(args: argparse.Namespace) -> None:
    from edge.backends import open_session
    from edge.bundle import load_bundle
    for path, shape in ((args.audio_model, (1, int(AUDIO_S * AUDIO.sample_rate))), (args.face_model, None)):
        bundle = load_bundle(path)
        session = open_session(bundle, args.backend, threads=1)
        session.run({bundle.input_name: np.zeros(shape or bundle.input_shape, np.float32)})


def _detector(name: str, profile: str) -> None:
    """One demo frame through the face stage, the detector on the profile's backend order."""
    from edge.face import FaceStage, make_detector
    media = DemoMedia()
    media.frame_at(0.0)
    FaceStage(make_detector(name, order=bench_profile(profile).runtime.backends)).process(media.frame)


def _decoder_mb(kb: int | None) -> float | None:
    return None if kb is None else round(kb / 1024.0, 2)


def _pipeline(args: argparse.Namespace) -> dict:
    from edge.pipeline import Pipeline
    pipeline = Pipeline(bench_profile(args.profile), args.audio_model, args.face_model, args.backend)
    media, decoder = DemoMedia(), None
    for _ in replay_hops(pipeline, media, media.seconds):
        decoder = media.video.decoder_rss_kb("VmHWM") or decoder
    return {"decoder_rss_mb": _decoder_mb(decoder)}


def _camera(args: argparse.Namespace) -> dict:
    """`avemo-edge run --camera URL` in this process for --seconds; the stream is the demo clip
    looped as MJPEG over HTTP by a separate ffmpeg (its memory is not counted)."""
    import socket
    import subprocess
    import edge
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/demo.mjpg"
    server = subprocess.Popen(["ffmpeg", "-nostdin", "-loglevel", "error", "-stream_loop", "-1", "-re", "-i",
                               str(DEMO_VIDEO), "-an", "-f", "mpjpeg", "-q:v", "5", "-listen", "1", url])
    decoder, faces = None, 0
    try:
        time.sleep(1.0)
        with edge.open(camera=url, profile=bench_profile(args.profile), backend=args.backend,
                       face_model=args.face_model, duration=args.seconds) as stream:
            for result in stream:
                faces += result.face is not None
                decoder = stream.camera.child_rss_kb("VmHWM") or decoder
    finally:
        server.kill()
        server.wait()
    return {"decoder_rss_mb": _decoder_mb(decoder), "hops_with_face": faces}


def _peer(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_peers import PEERS
    run_one = PEERS[args.peer].setup()
    run_one()


def _soak(args: argparse.Namespace) -> dict:
    """Replay the looped demo in real time for args.seconds; VmRSS sampled once a second."""
    from edge.pipeline import Pipeline
    pipeline = Pipeline(bench_profile(args.profile), args.audio_model, args.face_model, args.backend)
    begin, samples, hops = time.monotonic(), [], 0
    for _ in replay_hops(pipeline, DemoMedia(), args.seconds, realtime=True):
        hops += 1
        if time.monotonic() - begin >= len(samples):
            samples.append((round(time.monotonic() - begin, 2), round(proc_status_mb("VmRSS"), 3)))
    warmup = min(SOAK_WARMUP_S, args.seconds / 4)
    t, mb = np.array([s for s in samples if s[0] >= warmup]).T
    slope = float(np.polyfit(t, mb, 1)[0]) * 3600.0 if len(t) > 1 else 0.0
    return {"seconds": args.seconds, "hops": hops, "backend": pipeline.audio.session.name, "warmup_s": warmup,
            "rss_start_mb": mb[0], "rss_end_mb": mb[-1], "growth_mb": round(mb[-1] - mb[0], 3),
            "max_growth_mb": round(mb.max() - mb[0], 3), "slope_mb_per_h": round(slope, 3), "samples": samples}


def run_scenario(args: argparse.Namespace) -> dict:
    if args.scenario == "soak":
        return {"scenario": "soak", **_soak(args), "rss_mb": round(proc_status_mb("VmHWM"), 2)}
    extra: dict = {}
    if args.scenario == "baseline":
        pass  # this module already imported numpy and edge.settings
    elif args.scenario == "import":
        import edge.stream  # noqa: F401 - the runtime: stream, pipeline, backends, rings, fusion
    elif args.scenario in ("detector", "haar"):
        _detector("cnn" if args.scenario == "detector" else "haar", args.profile)
    elif args.scenario == "backend":
        _sessions(args)
    elif args.scenario == "pipeline":
        extra = _pipeline(args)
    elif args.scenario == "camera":
        extra = _camera(args)
    else:
        _peer(args)
    return {"scenario": args.scenario, "rss_mb": round(proc_status_mb("VmHWM"), 2),
            "rss_now_mb": round(proc_status_mb("VmRSS"), 2), **extra}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scenario", choices=SCENARIOS)
    p.add_argument("--audio-model", default="audio")
    p.add_argument("--face-model", default="face")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--profile", default="x86")
    p.add_argument("--peer", default=None)
    p.add_argument("--seconds", type=float, default=60.0, help="soak length (stream seconds, real time)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from edge.errors import AvemoError
    try:
        print(json.dumps(run_scenario(args)))
    except AvemoError as e:
        print(f"bench_child {args.scenario}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
