"""Latency, RAM and size of the students on every installed backend, per pipeline stage,
and next to the peers a user would run instead (issue 6).

    python tools/bench.py [--profile rpi4] [--models edge/models] [--json out.json]
                          [--plot out.png] [--markdown out.md] [--quick] [--soak SECONDS]

In:  two bundles (`--models DIR` with audio/ and face/, or `--audio-model/--face-model`),
     a firmware profile (threads, hop, fps), the demo recording edge/assets/demo.{mp4,wav}.
Out: a markdown table on stdout (and `--markdown`), a JSON report (`--json`) with
     models.<name>.<backend>.{p50_ms,p95_ms,p99_ms,params,macs,size_bytes,runs},
     pipeline.{hop_ms_p50,hop_ms_p99,rtf,rss_mb,stages}, peers.<name>.{p50_ms,rss_mb},
     rss, ratios, goals, numpy_hot_ops, machine (and soak with --soak); PNG plots (`--plot`).

Latency: perf_counter around each call after a warm-up, single thread and with the profile's
threads. RSS: VmHWM of a fresh process per scenario (tools/bench_child.py). MACs: from
model.onnx shapes at a fixed input length (Conv: out elements * Cin/group * kernel;
MatMul/Gemm: out elements * K). Peers: tools/bench_peers.py. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_child import AUDIO_S, DemoMedia, bench_profile, replay_hops  # noqa: E402
from bench_peers import PEERS, missing  # noqa: E402

from edge.backends import has_payload_for, installed_backends, open_session  # noqa: E402
from edge.backends.onnxruntime import OrtSession  # noqa: E402
from edge.bundle import PAYLOADS, Bundle, load_bundle  # noqa: E402
from edge.errors import AvemoError  # noqa: E402
from edge.face import FaceDetector, make_detector  # noqa: E402
from edge.pipeline import Pipeline  # noqa: E402
from edge.settings import AUDIO  # noqa: E402
from edge.views import views_of  # noqa: E402

CHILD = Path(__file__).resolve().parent / "bench_child.py"
MODEL_NAMES = ("audio", "face")
FP32 = "onnxruntime-fp32"
"""The float model.onnx in onnxruntime, next to its int8 model.int8.onnx ("onnxruntime")."""
HEAVY_OPS = ("Conv", "MatMul", "Gemm")
BACKEND_PAYLOAD = {"numpy": "npz", "onnxruntime": "int8.onnx", FP32: "onnx", "litert": "tflite"}


@dataclass(frozen=True)
class Reps:
    """How many timed calls (after `warmup` untimed ones) each measurement gets."""

    warmup: int
    runs: int
    peer_runs: int
    pipeline_s: float
    profile_runs: int


FULL, QUICK = Reps(20, 300, 200, 100.0, 100), Reps(3, 30, 20, 8.0, 10)


# ------------------------------------------------------------------ timing primitives

def percentiles(ms: np.ndarray) -> dict[str, float]:
    """p50/p95/p99/mean of a sample of milliseconds, rounded to µs."""
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": round(float(p50), 4), "p95_ms": round(float(p95), 4), "p99_ms": round(float(p99), 4),
            "mean_ms": round(float(np.mean(ms)), 4), "n": int(len(ms))}


def time_calls(fn: Callable[[], object], reps: int, warmup: int) -> np.ndarray:
    """Milliseconds of `reps` calls of fn, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    out = np.empty(reps)
    for i in range(reps):
        start = time.perf_counter_ns()
        fn()
        out[i] = (time.perf_counter_ns() - start) / 1e6
    return out


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Limit numpy's BLAS pool to n threads (threadpoolctl, when installed)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=n):
        yield


def machine_info() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    versions = {}
    for module in ("numpy", "onnxruntime", "ai_edge_litert", "cv2"):
        with contextlib.suppress(ImportError):
            versions[module] = getattr(__import__(module), "__version__", "?")
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu,
            "cores": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
            "versions": versions}


# ------------------------------------------------------------------ models

def find_models(args: argparse.Namespace) -> dict[str, Bundle]:
    root = Path(args.models)
    paths = {"audio": args.audio_model or root / "audio", "face": args.face_model or root / "face"}
    for name, path in paths.items():
        if not (Path(path) / "manifest.json").is_file():
            raise AvemoError(f"{path}: no {name} bundle there: train one (`make distill`), or pass "
                             f"--models DIR (with audio/ and face/) or --{name}-model DIR")
    return {name: load_bundle(path) for name, path in paths.items()}


def model_inputs(bundle: Bundle, window_s: float) -> dict[str, np.ndarray]:
    """Input label -> array: audio 1 s and the bundle's window; face one crop."""
    rng = np.random.default_rng(0)
    if bundle.modality == "face":
        return {f"{bundle.input_shape[-1]}px": rng.standard_normal(bundle.input_shape).astype(np.float32)}
    seconds = sorted({AUDIO_S, window_s})
    return {f"{s:g}s": (0.1 * rng.standard_normal((1, int(s * AUDIO.sample_rate)))).astype(np.float32)
            for s in seconds}


def open_backend(bundle: Bundle, backend: str, threads: int):
    """A session on backend, or None when the bundle has no payload for it."""
    kind = BACKEND_PAYLOAD[backend]
    if not bundle.has_payload(kind):
        return None
    if backend == FP32:
        return OrtSession(bundle.payload("onnx"), bundle.outputs, threads)
    return open_session(bundle, backend, threads=threads)


def bench_backend(bundle: Bundle, backend: str, inputs: dict, threads: tuple[int, ...], reps: Reps) -> dict | None:
    runs, samples = [], {}
    for n in threads:
        session = open_backend(bundle, backend, n)
        if session is None:
            return None
        for label, x in inputs.items():
            with blas_threads(n):
                ms = time_calls(lambda: session.run({bundle.input_name: x}), reps.runs, reps.warmup)
            runs.append({"input": label, "threads": n, **percentiles(ms)})
            samples[(label, n)] = ms
    main = runs[0]
    return {**{k: main[k] for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms")}, "input": main["input"],
            "threads": 1, "payload": PAYLOADS[BACKEND_PAYLOAD[backend]],
            "size_bytes": bundle.manifest["files"][PAYLOADS[BACKEND_PAYLOAD[backend]]]["bytes"],
            "runs": runs, "_samples": samples[(main["input"], 1)]}


def bench_models(models: dict[str, Bundle], profile, reps: Reps) -> dict:
    backends = installed_backends() + ([FP32] if "onnxruntime" in installed_backends() else [])
    threads = tuple(sorted({1, profile.device.threads}))
    out: dict = {}
    for name, bundle in models.items():
        inputs = model_inputs(bundle, bundle.window_s or AUDIO_S)
        stats = graph_stats(bundle, next(iter(inputs.values())).shape)
        views = views_of(bundle)  # a face bundle makes one call per test-time view
        out[name] = {"_graph": {**stats, "calls_per_hop": len(views) if views is not None else 1}}
        for backend in backends:
            result = bench_backend(bundle, backend, inputs, threads, reps)
            if result is None:
                out[name][backend] = {"skipped": f"bundle has no {PAYLOADS[BACKEND_PAYLOAD[backend]]}"}
            else:
                out[name][backend] = {**result, "params": stats.get("params"), "macs": stats.get("macs")}
    return out


# ------------------------------------------------------------------ params and MACs

def _static_shapes(model) -> dict[str, tuple[int, ...]]:
    from onnx import shape_inference
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        dims = v.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[v.name] = tuple(d.dim_value for d in dims)
    return shapes


def _run_shapes(model, names: list[str], x: np.ndarray) -> dict[str, tuple[int, ...]]:
    """Shapes shape inference could not fix (data-dependent Reshape), from one onnxruntime run."""
    import onnx
    import onnxruntime
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(names, {model.graph.input[0].name: x})
    return {n: v.shape for n, v in zip(names, values)}


def _node_macs(node, shapes: dict, inits: dict) -> int:
    out = int(np.prod(shapes[node.output[0]]))
    if node.op_type == "Conv":
        w = inits[node.input[1]].dims if node.input[1] in inits else shapes[node.input[1]]
        return out * int(np.prod(w[1:]))
    a = shapes[node.input[0]]
    trans_a = any(attr.name == "transA" and attr.i for attr in node.attribute)
    return out * int(a[0] if trans_a else a[-1])


def graph_stats(bundle: Bundle, input_shape: tuple[int, ...]) -> dict:
    """Parameters and MACs of model.onnx at a fixed input shape, split model / front end."""
    try:
        import onnx
    except ImportError:
        return {"note": "params/MACs need onnx: pip install onnx onnxruntime"}
    model = onnx.load(str(bundle.payload("onnx")))
    for d, n in zip(model.graph.input[0].type.tensor_type.shape.dim, input_shape):
        d.dim_value = n
    inits = {i.name: i for i in model.graph.initializer}
    heavy = [n for n in model.graph.node if n.op_type in HEAVY_OPS]
    shapes = _static_shapes(model)
    unknown = sorted({t for n in heavy for t in (n.output[0], n.input[0]) if t not in shapes and t not in inits})
    if unknown:
        shapes.update(_run_shapes(model, unknown, np.zeros(input_shape, np.float32)))
    shapes.update({name: tuple(i.dims) for name, i in inits.items()})
    stats = {"params": 0, "params_frontend": 0, "macs": 0, "macs_frontend": 0, "input_shape": list(input_shape)}
    for node in model.graph.node:
        where = "_frontend" if "frontend" in node.name else ""
        stats["params" + where] += sum(int(np.prod(inits[i].dims)) for i in node.input if i in inits)
        if node.op_type in HEAVY_OPS:
            stats["macs" + where] += _node_macs(node, shapes, inits)
    return stats


# ------------------------------------------------------------------ numpy hot ops

def _in_edge(code) -> bool:
    return not isinstance(code, str) and f"{os.sep}edge{os.sep}" in code.co_filename


def numpy_hot_ops(bundle: Bundle, x: np.ndarray, runs: int, top: int = 8) -> list[dict]:
    """cProfile of the numpy interpreter: where its time goes, by edge function (inline time,
    ufuncs included) and by numpy/builtin call (matmul, max, ...) under the edge function calling it."""
    session = open_session(bundle, "numpy")
    session.run({bundle.input_name: x})
    prof = cProfile.Profile()
    with blas_threads(1):
        prof.enable()
        for _ in range(runs):
            session.run({bundle.input_name: x})
        prof.disable()
    totals: dict[str, float] = {}
    for entry in prof.getstats():
        if not _in_edge(entry.code):
            continue  # numpy and builtins: counted below, under the edge function that called them
        caller = entry.code.co_qualname
        totals[caller] = totals.get(caller, 0.0) + entry.inlinetime
        for sub in entry.calls or ():
            if not _in_edge(sub.code):
                label = f"{caller} > {getattr(sub.code, 'co_qualname', sub.code)}"
                totals[label] = totals.get(label, 0.0) + sub.totaltime
    whole = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return [{"op": k, "share": round(v / whole, 3), "ms_per_run": round(1e3 * v / runs, 4)} for k, v in ranked]


# ------------------------------------------------------------------ pipeline

class TimedDetector:
    """A detector with the time of its detect() calls since the last `take()`."""

    def __init__(self, detector: FaceDetector) -> None:
        self.detector, self.spent_ms = detector, 0.0

    def detect(self, frame: np.ndarray):
        start = time.perf_counter()
        boxes = self.detector.detect(frame)
        self.spent_ms += (time.perf_counter() - start) * 1e3
        return boxes

    def take(self) -> float:
        spent, self.spent_ms = self.spent_ms, 0.0
        return spent


STAGES = {"ring": "ring copy", "vad": "VAD", "audio": "audio inference", "face_detect": "face detection",
          "crop": "frame copy + gray + crop", "face": "face inference", "fusion": "fusion", "total": "hop total"}


def _hop_stages(latency: dict, detect_ms: float) -> dict[str, float]:
    stages = {k: latency.get(k, 0.0) for k in STAGES if k != "crop"}
    if "face_detect" in latency:
        stages["crop"] = max(0.0, latency["face_detect"] - detect_ms)
        stages["face_detect"] = detect_ms
    return stages


def bench_pipeline(models: dict[str, Bundle], profile_name: str, backend: str, seconds: float,
                   detect_every: int | None = None) -> dict:
    """The demo replayed through the pipeline with the default (CNN) detector; `detect_every`
    overrides the profile's (1: detection on every frame)."""
    profile = bench_profile(profile_name)
    if detect_every is not None:
        profile = replace(profile, video=replace(profile.video, detect_every=detect_every))
    detector = TimedDetector(make_detector("cnn", backend, profile.device.threads, profile.runtime.backends))
    pipeline = Pipeline(profile, str(models["audio"].path), str(models["face"].path), backend, detector=detector)
    with blas_threads(profile.device.threads):
        hops = [_hop_stages(r.latency_ms, detector.take()) for r in replay_hops(pipeline, DemoMedia(), seconds)]
    totals = np.array([h["total"] for h in hops])
    means = {k: float(np.mean([h.get(k, 0.0) for h in hops])) for k in STAGES}
    face_side = means["face_detect"] + means["crop"] + means["face"]
    return {
        "backend": pipeline.audio.session.name, "detect_every": profile.video.detect_every,
        "hop_s": pipeline.hop_s, "window_s": pipeline.audio.bundle.window_s,
        "fps": profile.video.fps_cap, "hops": len(hops), "stream_s": len(hops) * pipeline.hop_s,
        "hop_ms_p50": round(float(np.percentile(totals, 50)), 4),
        "hop_ms_p99": round(float(np.percentile(totals, 99)), 4),
        "rtf": round(float(totals.sum()) / 1e3 / (len(hops) * pipeline.hop_s), 5),
        "face_path_ms": round(face_side, 4),
        "rtf_face_every_frame": round((means["total"] - face_side) / 1e3 / pipeline.hop_s
                                      + face_side / 1e3 * profile.video.fps_cap, 5),
        "stages": {k: {"label": STAGES[k], "mean_ms": round(means[k], 4),
                       "p50_ms": round(float(np.percentile([h.get(k, 0.0) for h in hops], 50)), 4)}
                   for k in STAGES},
        "_samples": totals,
    }


def bench_detectors(reps: Reps) -> dict:
    """ms per frame of the CNN detector (each installed backend it has a payload for, 1 thread)
    and of Haar, on the same demo frames in the same run."""
    media = DemoMedia()
    frames = [media.frame.copy() for t in np.arange(0.0, media.seconds, 0.5) if media.frame_at(t)]
    bundle = load_bundle("face_detector")
    candidates = {f"cnn ({b})": (lambda b=b: make_detector("cnn", b)) for b in installed_backends()
                  if has_payload_for(bundle, b)}
    candidates["haar"] = lambda: make_detector("haar")
    out = {}
    for name, make in candidates.items():
        try:
            detector = make()
        except AvemoError as e:
            out[name] = {"skipped": str(e)}
            continue
        calls = itertools.cycle(frames)
        with blas_threads(1):
            ms = time_calls(lambda: detector.detect(next(calls)), reps.peer_runs, reps.warmup)
        out[name] = {**percentiles(ms), "_samples": ms}
    return out


# ------------------------------------------------------------------ fresh-process RSS

def child(scenario: str, *extra: str, timeout: float = 900) -> dict:
    """Run tools/bench_child.py in a fresh interpreter; its JSON line, or {"error": ...}."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(CHILD), scenario, *extra], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_rss(models: dict[str, Bundle], profile: str, pipeline_backend: str) -> dict:
    paths = ["--audio-model", str(models["audio"].path), "--face-model", str(models["face"].path)]
    out = {"python + numpy": child("baseline").get("rss_mb"), "import edge": child("import").get("rss_mb")}
    for backend in installed_backends():
        if all(b.has_payload(BACKEND_PAYLOAD[backend]) for b in models.values()):
            out[f"{backend}: both models"] = child("backend", *paths, "--backend", backend).get("rss_mb")
    out["video decode + CNN face stage (default backend)"] = child("detector").get("rss_mb")
    out["video decode + OpenCV Haar face stage"] = child("haar").get("rss_mb")
    replay = child("pipeline", *paths, "--backend", pipeline_backend, "--profile", profile)
    camera = child("camera", "--face-model", str(models["face"].path), "--backend", pipeline_backend,
                   "--profile", profile, "--seconds", "10")
    out["pipeline (demo replay)"] = replay.get("rss_mb")
    out["ffmpeg decoder child (demo replay)"] = replay.get("decoder_rss_mb")
    out["pipeline (camera stream: MJPEG over HTTP, face only)"] = camera.get("rss_mb")
    out["ffmpeg decoder child (camera stream)"] = camera.get("decoder_rss_mb")
    return out


# ------------------------------------------------------------------ peers

def bench_peers(reps: Reps) -> dict:
    out = {}
    for name, peer in PEERS.items():
        hint = missing(name)
        if hint is not None:
            out[name] = {"skipped": f"not installed: {hint}", "item": peer.item}
            continue
        with blas_threads(1):
            ms = time_calls(peer.setup(), reps.peer_runs, reps.warmup)
        out[name] = {**percentiles(ms), "item": peer.item,
                     "rss_mb": child("peer", "--peer", name).get("rss_mb"), "_samples": ms}
    return out


def ratio_rows(report: dict) -> list[dict]:
    """Ours vs peers, same run: ratio < 1 means ours is cheaper."""
    models, peers = report["models"], report["peers"]

    def fastest(name: str) -> tuple[str, float]:
        timed = {b: v["p50_ms"] for b, v in models[name].items() if "p50_ms" in v}
        return min(timed.items(), key=lambda kv: kv[1])

    face_b, face_ms = fastest("face")
    audio_b, audio_ms = fastest("audio")
    pairs = [(f"face student ({face_b}) vs fer mini-Xception tflite, ms per face", face_ms, "fer_tflite", "p50_ms"),
             (f"audio student ({audio_b}) vs MFCC+SVM, ms per 1 s audio", audio_ms, "mfcc_svm", "p50_ms"),
             (f"audio student ({audio_b}) vs eGeMAPS+SVM, ms per 1 s audio", audio_ms, "egemaps_svm", "p50_ms"),
             ("face path per frame (CNN every Nth frame + crop + student) vs Haar on every frame, ms",
              report["pipeline"]["face_path_ms"], "haar", "p50_ms"),
             ("pipeline RSS vs fer tflite RSS, MB", report["pipeline"]["rss_mb"], "fer_tflite", "rss_mb"),
             ("pipeline RSS vs eGeMAPS+SVM RSS, MB", report["pipeline"]["rss_mb"], "egemaps_svm", "rss_mb")]
    det = report.get("detectors", {})
    cnn = {k: v["p50_ms"] for k, v in det.items() if k.startswith("cnn") and "p50_ms" in v}
    if cnn and "p50_ms" in det.get("haar", {}):
        best = min(cnn, key=cnn.get)
        pairs.append((f"{best} detector vs Haar, ms per frame (same frames)", cnn[best], "_haar", "p50_ms"))
        peers = {**peers, "_haar": det["haar"]}
    rows = []
    for what, ours, peer, key in pairs:
        theirs = peers.get(peer, {}).get(key)
        if ours is not None and theirs:
            rows.append({"what": what, "ours": round(ours, 4), "peer": round(theirs, 4),
                         "ratio": round(ours / theirs, 3)})
    return rows


def goal_rows(report: dict) -> list[dict]:
    """Measured against the design's own goals and the profile's [budget] (RAM, hop time)."""
    models, peers, pipe, budget = report["models"], report["peers"], report["pipeline"], report["budget"]
    face_calls = report["graphs"].get("face", {}).get("calls_per_hop", 1)  # one per test-time view
    numpy_hop = (models["audio"].get("numpy", {}).get("p50_ms", 0)
                 + face_calls * models["face"].get("numpy", {}).get("p50_ms", 0))
    face_best = face_calls * min(v["p50_ms"] for v in models["face"].values() if "p50_ms" in v)
    audio_best = min(v["p50_ms"] for v in models["audio"].values() if "p50_ms" in v)
    fer = peers.get("fer_tflite", {}).get("p50_ms")
    rows = [(f"numpy per-hop compute (1 s audio + {face_calls} face calls), 1 thread", numpy_hop, 5.0, "ms"),
            (f"face student x {face_calls} calls, fastest backend", face_best, 2 * fer if fer else None, "ms (2x fer tflite)"),
            ("audio student per 1 s audio, fastest backend", audio_best,
             peers.get("mfcc_svm", {}).get("p50_ms"), "ms (MFCC+SVM)"),
            ("audio student per 1 s audio, fastest backend", audio_best,
             peers.get("egemaps_svm", {}).get("p50_ms"), "ms (eGeMAPS+SVM)"),
            ("pipeline hop p99, demo replay", pipe.get("hop_ms_p99"), budget["hop_ms"], "ms (profile budget.hop_ms)"),
            ("pipeline peak RSS, both models, demo replay", pipe.get("rss_mb"), budget["ram_mb"],
             "MB (profile budget.ram_mb)"),
            ("pipeline peak RSS, camera stream", report["rss"].get("pipeline (camera stream: MJPEG over HTTP, "
                                                                   "face only)"), budget["ram_mb"],
             "MB (profile budget.ram_mb)")]
    return [{"goal": g, "measured": None if m is None else round(m, 4), "target": t, "unit": u,
             "met": None if m is None or t is None else bool(m <= t)} for g, m, t, u in rows]


# ------------------------------------------------------------------ soak

def soak(models: dict[str, Bundle], profile: str, backend: str, seconds: float) -> dict:
    """Fresh process, demo looped in real time for `seconds`, RSS sampled every second."""
    return child("soak", "--audio-model", str(models["audio"].path), "--face-model", str(models["face"].path),
                 "--backend", backend, "--profile", profile, "--seconds", str(seconds),
                 timeout=seconds + 600)


# ------------------------------------------------------------------ output

def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:,}" if isinstance(v, int) else f"{v:.3f}" if isinstance(v, float) and abs(v) < 100 else f"{v:.1f}"


def _model_table(report: dict) -> list[str]:
    lines = ["| model | backend | threads | input | p50 ms | p95 ms | p99 ms | params | MACs | payload bytes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, backends in report["models"].items():
        for backend, v in backends.items():
            if backend.startswith("_"):
                continue
            if "skipped" in v:
                lines.append(f"| {name} | {backend} | | | {v['skipped']} | | | | | |")
                continue
            for r in v["runs"]:
                lines.append(f"| {name} | {backend} | {r['threads']} | {r['input']} | {_fmt(r['p50_ms'])} | "
                             f"{_fmt(r['p95_ms'])} | {_fmt(r['p99_ms'])} | {_fmt(v['params'])} | "
                             f"{_fmt(v['macs'])} | {_fmt(v['size_bytes'])} |")
    return lines


def _pipeline_table(report: dict) -> list[str]:
    p = report["pipeline"]
    lines = [f"Pipeline ({p['backend']}, {p['window_s']:g} s audio window, hop {p['hop_s']:g} s, video "
             f"{p['fps']:g} fps, {p['hops']} hops): hop p50 {_fmt(p['hop_ms_p50'])} ms, p99 "
             f"{_fmt(p['hop_ms_p99'])} ms, real-time factor {p['rtf']:.4f} (face on every frame: "
             f"{p['rtf_face_every_frame']:.4f}), peak RSS {_fmt(p['rss_mb'])} MB.", "",
             "| stage | mean ms per hop | p50 ms |", "|---|---|---|"]
    lines += [f"| {s['label']} | {_fmt(s['mean_ms'])} | {_fmt(s['p50_ms'])} |" for s in p["stages"].values()]
    e = report.get("pipeline_detect_every_frame")
    if e:
        lines += ["", f"With the detector on every frame (detect_every 1): hop p50 {_fmt(e['hop_ms_p50'])} ms, "
                  f"p99 {_fmt(e['hop_ms_p99'])} ms, face detection {_fmt(e['stages']['face_detect']['mean_ms'])} "
                  f"ms mean per hop."]
    lines += ["", "| face detector, one demo frame, 1 thread | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|"]
    lines += [f"| {k} | {_fmt(v.get('p50_ms'))} | {_fmt(v.get('p95_ms'))} | {_fmt(v.get('p99_ms'))} |"
              if "skipped" not in v else f"| {k} | {v['skipped']} | | |"
              for k, v in report.get("detectors", {}).items()]
    return lines


def _peer_table(report: dict) -> list[str]:
    lines = ["| peer | item | p50 ms | p95 ms | p99 ms | RSS MB |", "|---|---|---|---|---|---|"]
    for name, v in report["peers"].items():
        if "skipped" in v:
            lines.append(f"| {name} | {v['item']} | {v['skipped']} | | | |")
        else:
            lines.append(f"| {name} | {v['item']} | {_fmt(v['p50_ms'])} | {_fmt(v['p95_ms'])} | "
                         f"{_fmt(v['p99_ms'])} | {_fmt(v['rss_mb'])} |")
    return lines


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, {m['machine']}), profile "
             f"`{report['profile']}`{' (--quick)' if report['quick'] else ''}.", "", *_model_table(report), "",
             *_pipeline_table(report), "", "| peak RSS, fresh process | MB |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in report["rss"].items()]
    lines += ["", *_peer_table(report), "", "| ours vs peer (same run) | ours | peer | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['what']} | {_fmt(r['ours'])} | {_fmt(r['peer'])} | {r['ratio']:.3g}x |" for r in report["ratios"]]
    lines += ["", "| goal | measured | target | met |", "|---|---|---|---|"]
    lines += [f"| {g['goal']} | {_fmt(g['measured'])} | {_fmt(g['target'])} {g['unit']} | "
              f"{'-' if g['met'] is None else 'yes' if g['met'] else 'NO'} |" for g in report["goals"]]
    for name, ops in report["numpy_hot_ops"].items():
        lines += ["", f"numpy interpreter, {name}: hottest functions (cProfile; `f > g`: g called from f): "
                  + ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in ops[:5])]
    if "soak" in report:
        s = report["soak"]
        lines += ["", f"Soak: {s.get('seconds')} s, {s.get('hops')} hops, RSS after warm-up "
                  f"{_fmt(s.get('rss_start_mb'))} -> {_fmt(s.get('rss_end_mb'))} MB "
                  f"(growth {_fmt(s.get('growth_mb'))} MB, max {_fmt(s.get('max_growth_mb'))} MB, linear fit "
                  f"{_fmt(s.get('slope_mb_per_h'))} MB/h)"
                  if "error" not in s else f"Soak failed: {s['error']}"]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 5))
    series = {f"{n} / {b}": v["_samples"] for n, bs in report["models"].items() for b, v in bs.items()
              if "_samples" in v}
    series.update({f"peer {n}": v["_samples"] for n, v in report["peers"].items() if "_samples" in v})
    ax1.boxplot(list(series.values()), showfliers=False)
    ax1.set_xticks(range(1, len(series) + 1), list(series), fontsize=7, rotation=60)
    ax1.set_yscale("log")
    ax1.set_ylabel("ms per call (1 thread)")
    ax1.set_title("latency distribution")
    rss = {k: v for k, v in report["rss"].items() if v}
    rss.update({f"peer {n}": v["rss_mb"] for n, v in report["peers"].items() if v.get("rss_mb")})
    ax2.barh(list(rss), list(rss.values()), color="tab:orange")
    ax2.set_xlabel("peak RSS, fresh process (MB)")
    ax2.set_title("memory")
    stages = {s["label"]: s["mean_ms"] for k, s in report["pipeline"]["stages"].items() if k != "total"}
    ax3.barh(list(stages), list(stages.values()), color="tab:green")
    ax3.set_xlabel("mean ms per hop")
    ax3.set_title(f"one hop ({report['pipeline']['backend']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _public(obj):
    """The report without the raw samples (keys starting with '_')."""
    if isinstance(obj, dict):
        return {k: _public(v) for k, v in obj.items() if not k.startswith("_")}
    return obj


# ------------------------------------------------------------------ main

def run(args: argparse.Namespace) -> dict:
    reps = QUICK if args.quick else FULL
    profile = bench_profile(args.profile)
    models = find_models(args)
    report = {"machine": machine_info(), "profile": profile.name, "quick": args.quick,
              "budget": {"ram_mb": profile.budget.ram_mb, "hop_ms": profile.budget.hop_ms},
              "reps": {"warmup": reps.warmup, "runs": reps.runs, "peer_runs": reps.peer_runs}}
    report["models"] = bench_models(models, profile, reps)
    report["graphs"] = {name: v.pop("_graph") for name, v in report["models"].items()}
    report["pipeline"] = bench_pipeline(models, args.profile, args.backend, reps.pipeline_s)
    report["pipeline_detect_every_frame"] = bench_pipeline(models, args.profile, args.backend, reps.pipeline_s, 1)
    report["detectors"] = bench_detectors(reps)
    report["rss"] = bench_rss(models, args.profile, args.backend)
    report["pipeline"]["rss_mb"] = report["rss"]["pipeline (demo replay)"]
    report["peers"] = bench_peers(reps)
    report["ratios"], report["goals"] = ratio_rows(report), goal_rows(report)
    report["numpy_hot_ops"] = {name: numpy_hot_ops(b, next(iter(model_inputs(b, AUDIO_S).values())),
                                                   reps.profile_runs) for name, b in models.items()}
    if args.soak:
        report["soak"] = soak(models, args.profile, args.backend, args.soak)
    return report


def write_outputs(report: dict, args: argparse.Namespace) -> str:
    text = markdown(report)
    for path in (args.markdown, args.json, args.plot):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    if args.markdown:
        Path(args.markdown).write_text(text, encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps(_public(report), indent=2) + "\n", encoding="utf-8")
    if args.plot:
        plot(report, Path(args.plot))
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="x86", help="firmware profile (threads, hop, fps)")
    p.add_argument("--models", default=str(Path(__file__).resolve().parents[1] / "edge" / "models"),
                   help="folder with audio/ and face/ bundles")
    p.add_argument("--audio-model", default=None, help="audio bundle folder (overrides --models)")
    p.add_argument("--face-model", default=None, help="face bundle folder (overrides --models)")
    p.add_argument("--backend", default="numpy", help="backend of the pipeline figures (numpy, onnxruntime, auto)")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None)
    p.add_argument("--markdown", default=None)
    p.add_argument("--quick", action="store_true", help="fewer repetitions (well under a minute)")
    p.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                   help="also replay the demo in a loop for SECONDS and report RSS growth")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        print(write_outputs(run(args), args), end="")
    except AvemoError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
