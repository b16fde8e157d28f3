"""What `tools/arm_check.sh` runs on both interpreters (x86-64 and aarch64 under qemu).

    arm_compare.py inputs DIR        write the fixed inputs once (on x86: needs cv2, soundfile)
    arm_compare.py measure --inputs DIR --audio-model M --face-model M --json OUT
                                     [--backends numpy,onnxruntime]
    arm_compare.py diff X86.json ARM.json [--atol 0.02]   exit 1 when they do not agree

Inputs (DIR, written once so both sides read the very same bytes):
    audio/labels.csv + 16-bit WAVs (a few RAVDESS utterances, or demo.wav cut in pieces when
    ../shared/data is absent), face/labels.csv + PNG crops (a few FER2013 faces, or crops of
    edge/assets/portrait.jpg), speech.wav (edge/assets/demo.wav) for `avemo-edge run`.
    WAV and PNG decode bit-exactly everywhere; FLAC and JPEG would add decoders to the check.

Measure JSON, per backend: the bundles' names and hashes, `avemo-edge eval` reports for the
audio and face folders (timing-free), the probabilities of every eval item (the exact inputs
eval feeds the model), and the JSON lines of `avemo-edge run --audio speech.wav` without
`latency_ms`. Nothing timed is recorded: timings under emulation mean nothing.

Agreement (diff): every label (eval confusion matrices, item argmax, per-hop audio/fused
labels, voiced flags) is identical, and every probability is within `atol` of x86's. A label
may differ only where x86's top two probabilities are closer than `atol` (a tie at int8
precision); such ties are counted in the output, never hidden.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import platform
import sys
import wave
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edge.settings import AUDIO, FACE  # noqa: E402

ATOL = 0.02
"""Largest |p_arm - p_x86| allowed on any class probability (a few int8 rounding steps)."""
RUN_SECONDS = 4.0
"""Stream time of the `avemo-edge run --audio` replay compared (each hop costs seconds under qemu)."""
N_AUDIO, N_FACE = 8, 7
SHARED = Path(os.environ.get("AVEMO_DATA", REPO.parent / "shared" / "data"))
ASSETS = REPO / "edge" / "assets"


# --- inputs (x86 only) ------------------------------------------------------------------------

def _write_wav(path: Path, samples: np.ndarray) -> None:
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(AUDIO.sample_rate)
        w.writeframes(pcm.tobytes())


def _first_per_label(table: Path, n: int) -> list[tuple[Path, str]]:
    """The first row of each label in `table` (labels.csv), then more rows, up to n."""
    with table.open(newline="") as f:
        rows = [(table.parent / r["path"], r["label"]) for r in csv.DictReader(f)]
    firsts = list({label: (path, label) for path, label in reversed(rows)}.values())[::-1]
    return (firsts + [r for r in rows if r not in firsts])[:n]


def _audio_items() -> list[tuple[str, np.ndarray]]:
    from edge.audio import read_audio
    table = SHARED / "ravdess_speech" / "labels.csv"
    if table.is_file():
        return [(label, read_audio(path)) for path, label in _first_per_label(table, N_AUDIO)]
    demo = read_audio(ASSETS / "demo.wav")
    piece = 2 * AUDIO.sample_rate
    return [("neutral", demo[i:i + piece]) for i in range(0, len(demo) - piece + 1, piece)]


def _face_items() -> list[tuple[str, np.ndarray]]:
    import cv2
    table = SHARED / "fer2013" / "train" / "labels.csv"
    if table.is_file():
        return [(label, cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)) for path, label in _first_per_label(table, N_FACE)]
    gray = cv2.imread(str(ASSETS / "portrait.jpg"), cv2.IMREAD_GRAYSCALE)
    side, size = min(gray.shape), (FACE.size, FACE.size)
    crops = [gray[k:side - k, k:side - k] for k in range(0, 8 * N_FACE, 8)]
    return [("neutral", cv2.resize(c, size, interpolation=cv2.INTER_AREA)) for c in crops]


def _write_folder(folder: Path, items: list[tuple[str, np.ndarray]], suffix: str, write) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,label"]
    for i, (label, data) in enumerate(items):
        name = f"{i:02d}_{label}{suffix}"
        write(folder / name, data)
        lines.append(f"{name},{label}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")


def make_inputs(out: Path) -> Path:
    """Write the fixed inputs into `out` (see module docstring); returns `out`."""
    import cv2
    _write_folder(out / "audio", _audio_items(), ".wav", _write_wav)
    _write_folder(out / "face", _face_items(), ".png", lambda p, img: cv2.imwrite(str(p), img))
    (out / "speech.wav").write_bytes((ASSETS / "demo.wav").read_bytes())
    return out


# --- measure (both interpreters) -------------------------------------------------------------

def _cli(argv: list[str]) -> str:
    """Run `avemo-edge ARGV` in this process; its stdout. Raises on a non-zero exit."""
    from edge.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"arm_compare: `avemo-edge {' '.join(argv)}` exited {code}")
    return out.getvalue()


def _eval(model: str, data: Path, backend: str, tmp: Path) -> dict:
    report_path = tmp / f"eval-{backend}-{data.name}.json"
    _cli(["eval", "--model", model, "--data", str(data), "--backend", backend, "--json", str(report_path)])
    report = json.loads(report_path.read_text())
    return {k: report[k] for k in ("n", "labels", "confusion", "accuracy", "uar", "macro_f1", "label_mapping")}


def _items(model: str, data: Path, backend: str) -> list[dict]:
    """Probabilities of every eval row, from the very inputs `avemo-edge eval` builds."""
    from edge.bundle import load_bundle
    from edge.evaluate import read_labels_csv, scorer
    from edge.profiles import load_profile
    bundle = load_bundle(model)
    score_item = scorer(model, bundle.modality, load_profile("x86"), backend)
    return [{"path": row.path.name, "probs": None if (p := score_item(row.path)) is None else p.tolist()}
            for row in read_labels_csv(data, bundle.modality)]


def _run(model: str, speech: Path, backend: str) -> list[dict]:
    lines = _cli(["run", "--audio", str(speech), "--audio-model", model, "--backend", backend,
                  "--duration", str(RUN_SECONDS)]).splitlines()
    hops = [json.loads(line) for line in lines if line.strip()]
    for hop in hops:
        hop.pop("latency_ms", None)
    return hops


def measure(inputs: Path, audio_model: str, face_model: str, backends: list[str], tmp: Path) -> dict:
    """Everything compared, for each backend; see module docstring."""
    from edge.bundle import load_bundle
    bundles = {m: load_bundle(m) for m in (audio_model, face_model)}
    if backends == ["auto"]:
        backends = ["numpy", "onnxruntime"] + ["litert"] * all(b.has_payload("tflite") for b in bundles.values())
    out = {"machine": platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
           "bundles": {b.modality: {"name": b.name, "files": {k: v["sha256"] for k, v in b.manifest["files"].items()}}
                       for b in bundles.values()},
           "backends": {}}
    for backend in backends:
        out["backends"][backend] = {
            "eval": {"audio": _eval(audio_model, inputs / "audio", backend, tmp),
                     "face": _eval(face_model, inputs / "face", backend, tmp)},
            "items": {"audio": _items(audio_model, inputs / "audio", backend),
                      "face": _items(face_model, inputs / "face", backend)},
            "run": _run(audio_model, inputs / "speech.wav", backend)}
    return out


# --- diff (x86) ------------------------------------------------------------------------------

class Diff:
    """Collects mismatches, ties and the largest probability gap of one comparison."""

    def __init__(self, atol: float) -> None:
        self.atol, self.problems, self.ties, self.max_gap, self.compared = atol, [], [], 0.0, 0

    def equal(self, where: str, ref, other) -> None:
        if ref != other:
            self.problems.append(f"{where}: x86 {ref!r} != arm {other!r}")

    def probs(self, where: str, ref: dict | list | None, other: dict | list | None) -> None:
        """Compare two probability vectors (lists, or dicts label -> p) and their argmax."""
        if ref is None or other is None:
            self.equal(where, ref, other)
            return
        keys = list(ref) if isinstance(ref, dict) else None
        a = np.array([ref[k] for k in keys] if keys else ref, np.float64)
        b = np.array([other.get(k, np.nan) for k in keys] if keys else other, np.float64)
        if a.shape != b.shape:
            self.problems.append(f"{where}: {a.shape[0]} probabilities on x86, {b.shape[0]} on arm")
            return
        gap = float(np.max(np.abs(a - b)))
        self.compared += 1
        self.max_gap = max(self.max_gap, gap)
        if not gap <= self.atol:
            self.problems.append(f"{where}: probabilities differ by {gap:.4f} > {self.atol}")
        if int(np.argmax(a)) != int(np.argmax(b)):
            top2 = np.sort(a)[-2:]
            (self.ties if top2[1] - top2[0] < self.atol else self.problems).append(
                f"{where}: label x86 #{int(np.argmax(a))} != arm #{int(np.argmax(b))}")

    def report(self) -> dict:
        return {"ok": not self.problems, "atol": self.atol, "probability_vectors_compared": self.compared,
                "max_probability_gap": round(self.max_gap, 6), "ties": self.ties, "problems": self.problems}


def _diff_backend(d: Diff, name: str, ref: dict, other: dict) -> None:
    for modality in ("audio", "face"):
        for key in ("n", "labels", "confusion", "label_mapping"):
            d.equal(f"{name}/eval/{modality}/{key}", ref["eval"][modality][key], other["eval"][modality][key])
        d.equal(f"{name}/items/{modality}/paths", [i["path"] for i in ref["items"][modality]],
                [i["path"] for i in other["items"][modality]])
        for r, o in zip(ref["items"][modality], other["items"][modality]):
            d.probs(f"{name}/items/{modality}/{r['path']}", r["probs"], o["probs"])
    d.equal(f"{name}/run/hops", len(ref["run"]), len(other["run"]))
    for r, o in zip(ref["run"], other["run"]):
        where = f"{name}/run/t={r['t']}"
        d.equal(f"{where}/t", r["t"], o["t"])
        for part in ("audio", "fused"):
            rp, op = r.get(part) or {}, o.get(part) or {}
            d.equal(f"{where}/{part}/label", rp.get("label"), op.get("label"))
            d.probs(f"{where}/{part}/probs", rp.get("probs"), op.get("probs"))
        d.equal(f"{where}/audio/voiced", (r.get("audio") or {}).get("voiced"), (o.get("audio") or {}).get("voiced"))


def diff(ref: dict, other: dict, atol: float = ATOL) -> dict:
    """Compare x86's measure JSON (`ref`) with the other machine's; a report dict with `ok`."""
    d = Diff(atol)
    d.equal("bundles", ref["bundles"], other["bundles"])
    d.equal("backends", sorted(ref["backends"]), sorted(other["backends"]))
    for name in sorted(set(ref["backends"]) & set(other["backends"])):
        _diff_backend(d, name, ref["backends"][name], other["backends"][name])
    out = d.report()
    out.update(machines=[ref["machine"], other["machine"]], numpy=[ref["numpy"], other["numpy"]],
               backends=sorted(ref["backends"]), bundles=ref["bundles"],
               eval={b: {m: {"n": r["eval"][m]["n"], "accuracy": r["eval"][m]["accuracy"]} for m in ("audio", "face")}
                     for b, r in ref["backends"].items()},
               run_hops=len(next(iter(ref["backends"].values()))["run"]) if ref["backends"] else 0)
    return out


# --- command line ----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("inputs").add_argument("out", type=Path)
    m = sub.add_parser("measure")
    m.add_argument("--inputs", type=Path, required=True)
    m.add_argument("--audio-model", default="audio")
    m.add_argument("--face-model", default="face")
    m.add_argument("--backends", default="auto", help="comma list; auto: numpy,onnxruntime (+litert with .tflite)")
    m.add_argument("--json", type=Path, required=True)
    d = sub.add_parser("diff")
    d.add_argument("x86", type=Path)
    d.add_argument("other", type=Path)
    d.add_argument("--atol", type=float, default=ATOL)
    args = p.parse_args(argv)
    if args.cmd == "inputs":
        print(make_inputs(args.out))
        return 0
    if args.cmd == "measure":
        from edge.errors import AvemoError
        try:
            result = measure(args.inputs, args.audio_model, args.face_model, args.backends.split(","), args.json.parent)
        except AvemoError as err:
            print(f"arm_compare: error: {err} (no trained bundles yet? pass --audio-model/--face-model)", file=sys.stderr)
            return 2
        args.json.write_text(json.dumps(result, indent=1))
        return 0
    report = diff(json.loads(args.x86.read_text()), json.loads(args.other.read_text()), args.atol)
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
