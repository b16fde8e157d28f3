"""`avemo-edge` command line: a thin layer over `edge.open` and `edge.evaluate`.

    avemo-edge run --mic --camera                  live, one JSON line per hop on stdout
    avemo-edge run --video talk.mp4 --overlay out.mp4
    avemo-edge run --mic --camera --serve 8080     also a live web view on http://127.0.0.1:8080/
    avemo-edge info                                models, backends, profile, devices
    avemo-edge eval --model audio --data DIR       accuracy, UAR, macro-F1, confusion

Bad input (an `AvemoError`) prints one line on stderr and exits with code 2; SIGINT and
SIGTERM stop the loop, flush what was printed and exit 0.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import NoReturn

from edge.errors import AvemoError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors (an unknown option, `--hop abc`) are one line and exit 2,
    like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"avemo-edge: error: {message} (see `{self.prog} --help`)\n")


def _device_spec(value: str) -> int | str:
    """A device index (edge.open checks its range) or a name / path / URL."""
    return int(value) if value.removeprefix("-").isdigit() else value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="x86", help="firmware profile name or .toml path (default x86)")
    p.add_argument("--backend", default="auto", choices=["auto", "numpy", "onnxruntime", "litert"])


def _add_adapt_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-adapt", action="store_true",
                   help="no live speaker adaptation: an audio model with a speaker-statistics input gets "
                        "each window's own statistics")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="avemo-edge", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="stream emotions from a mic/camera or a recording")
    run.add_argument("--mic", nargs="?", const=True, default=None, type=_device_spec, metavar="DEVICE",
                     help="live microphone (default device, or an index / name from `avemo-edge info`)")
    run.add_argument("--camera", nargs="?", const=0, default=None, type=_device_spec, metavar="SPEC",
                     help="live camera: index (default 0), video file or rtsp/http URL")
    run.add_argument("--audio", metavar="FILE", help="replay a wav/flac file")
    run.add_argument("--video", metavar="FILE", help="replay a video file (frames and its audio track)")
    run.add_argument("--duration", type=float, help="stop after S seconds of stream time")
    run.add_argument("--hop", type=float, help="seconds between results (default: the profile's)")
    run.add_argument("--audio-model", default="audio", help="bundle path or shipped name (default audio)")
    run.add_argument("--face-model", default="face", help="bundle path or shipped name (default face)")
    run.add_argument("--no-audio", action="store_true", help="ignore the audio of a --video")
    run.add_argument("--detector", default="cnn", metavar="cnn|haar|PATH",
                     help="face detector: cnn (the shipped CNN bundle, default), haar (OpenCV), or a detector bundle")
    run.add_argument("--capture", default="ffmpeg", choices=["ffmpeg", "opencv"],
                     help="video decoding: an ffmpeg child process (default) or OpenCV in the process")
    run.add_argument("--realtime", action="store_true", help="pace a replay at real time")
    run.add_argument("--overlay", metavar="OUT.mp4", help="write the video with box and label drawn")
    run.add_argument("--pretty", action="store_true", help="human-readable lines instead of JSON")
    run.add_argument("--serve", metavar="[HOST:]PORT", help="live web view of the stream (default host "
                     "127.0.0.1; any other host needs the printed token URL)")
    _add_model_args(run)
    _add_adapt_arg(run)
    info = sub.add_parser("info", help="models, backends, profile and devices found")
    _add_model_args(info)
    ev = sub.add_parser("eval", help="score a model on a data folder (labels.csv)")
    ev.add_argument("--model", required=True, help="bundle path or shipped name (audio, face)")
    ev.add_argument("--data", required=True, help="data folder with labels.csv")
    ev.add_argument("--json", metavar="OUT", help="write the report as JSON")
    ev.add_argument("--plot", metavar="OUT.png", help="write the confusion matrix as PNG")
    ev.add_argument("--detect", action="store_true", help="run the face detector on images first")
    ev.add_argument("--limit", type=int, help="score only the first N rows")
    _add_model_args(ev)
    _add_adapt_arg(ev)
    return parser


def pretty(result) -> str:
    """One human-readable line per hop."""
    from edge.pipeline import top_label
    audio = top_label(result.audio) if result.audio else "n/a"
    face = top_label(result.face) if result.face is not None else "no face"
    fused = top_label(result.fused)
    return f"t={result.t:7.2f}s  fused: {fused:<16} audio: {audio:<16} face: {face:<16} " \
           f"{result.latency_ms.get('total', 0):6.1f} ms"


def _stop_on_signals() -> threading.Event:
    """SIGINT and SIGTERM set the returned event; the loop ends after the hop in progress.
    (Raising KeyboardInterrupt from the handler could land inside the stream's own code, with
    a lock held or a thread half-stopped, and hang the exit.) A second signal raises it anyway:
    the way out when the loop itself is stuck, e.g. writing to a pipe nobody reads."""
    requested = threading.Event()

    def stop(signum, frame):
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    return requested


def cmd_run(args: argparse.Namespace) -> int:
    import edge
    from edge.overlay import write_overlay
    if args.overlay and not args.video:
        raise AvemoError("--overlay draws on a replayed video: use it with --video FILE")
    stream = edge.open(mic=args.mic, camera=args.camera, audio=args.audio, video=args.video,
                       profile=args.profile, backend=args.backend, hop=args.hop,
                       duration=args.duration, realtime=args.realtime,
                       audio_model=None if args.no_audio else args.audio_model,
                       face_model=args.face_model, serve=args.serve, detector=args.detector,
                       capture=args.capture, adapt=not args.no_adapt)
    results, fused, warned = [], Counter(), set()
    stop_requested = _stop_on_signals()
    try:
        with stream:
            if stream.server is not None:
                print(f"avemo-edge: live view at {stream.server.url}", file=sys.stderr, flush=True)
            for result in stream:
                if stop_requested.is_set():
                    break
                for event in result.events:
                    if event not in warned:
                        print(f"avemo-edge: warning: {event}", file=sys.stderr, flush=True)
                        warned.add(event)
                print(pretty(result) if args.pretty else result.to_json(), flush=True)
                fused[result.fused["label"] if result.fused else None] += 1
                if args.overlay:
                    results.append(result)
    except BrokenPipeError:
        sys.stderr.close()
        return 0
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C may abort the overlay
    if args.overlay:
        write_overlay(args.video, results, args.overlay)
    print(_summary(fused), file=sys.stderr)
    return 0


def _summary(fused: Counter) -> str:
    hops = sum(fused.values())
    spoken = {k: v for k, v in fused.most_common() if k is not None}
    shares = ", ".join(f"{k} {v / hops:.0%}" for k, v in spoken.items()) or "no emotion (no voice, no face)"
    return f"avemo-edge: {hops} hops; fused labels: {shares}"


def cmd_info(args: argparse.Namespace) -> int:
    from edge.info import gather
    print(json.dumps(gather(args.profile), indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from edge.evaluate import evaluate
    from edge.metrics import format_report, plot_confusion
    from edge.profiles import load_profile
    report = evaluate(args.model, args.data, load_profile(args.profile), args.backend, detect=args.detect,
                      limit=args.limit, adapt=not args.no_adapt)
    print(format_report(report))
    if "no_adapt" in report:
        print(f"speaker adaptation (causal, per speaker): UAR {report['uar']:.4f}; "
              f"without (--no-adapt): UAR {report['no_adapt']['uar']:.4f}")
    if report["no_answer"]:
        print(f"no answer for {report['no_answer']} items (no voiced hop / no face found)")
    mapping = report["label_mapping"]
    if mapping["mapped"] or mapping["left_out"] or mapping["predictions_mapped"]:
        print(f"label mapping: {json.dumps(mapping)}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.plot:
        plot_confusion(report, args.plot, title=f"{report['model']} on {Path(args.data).name}: "
                                                f"UAR {report['uar']:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = {"run": cmd_run, "info": cmd_info, "eval": cmd_eval}[args.command]
    try:
        return command(args)
    except AvemoError as err:
        print(f"avemo-edge: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
