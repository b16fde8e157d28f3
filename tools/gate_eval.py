"""Measure the voicing gate (`edge.features.VoiceGate`) against the energy-only gate it replaced.

    python tools/gate_eval.py [--seeds 50] [--data ../shared/data]

Prints, as markdown: the cost of one call on a 2 s window; on real speech (RAVDESS actors
11-20, never used to pick the thresholds, which were tuned on actors 1-10; the CREMA-D
fixture; the demo clip's espeak voice), the share of the windows the energy gate passes on the
clean speech that each gate passes clean and with white or pink noise at 10 dB SNR; and, for
each synthetic noise at each level, how many 2 s windows each gate rejects, the tail over
1000 s of the closest noises, and hum under a louder noise (a known limit). The signals are
the test suite's (`tests/media.py`); docs/voicing-gate.md holds the figures.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from edge.audio import read_audio, read_video_audio  # noqa: E402
from edge.features import VoiceGate  # noqa: E402
from media import NOISES, energy_voiced, gate_windows, noise, pass_rates  # noqa: E402

LEVELS = (-80, -60, -40, -20, -10, 0)
WINDOW = 32000


def cost_ms(gate: VoiceGate, window: np.ndarray, calls: int = 2000) -> tuple[float, float]:
    """p50 and p99 milliseconds of one `gate.voiced(window)`."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        gate.voiced(window)
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50)) * 1e3, float(np.percentile(times, 99)) * 1e3


def speech_sets(data: Path, per_actor: int) -> dict[str, list[np.ndarray]]:
    rows = list(csv.DictReader(open(data / "ravdess_speech" / "labels.csv")))
    rng, ravdess = np.random.default_rng(0), []
    for actor in range(11, 21):
        mine = [r for r in rows if r["speaker"] == f"Actor_{actor:02d}"]
        ravdess += [read_audio(data / "ravdess_speech" / mine[i]["path"])
                    for i in rng.choice(len(mine), per_actor, replace=False)]
    cremad = [read_audio(p) for p in sorted((data / "cremad_fixture" / "wav16k").glob("*.wav"))]
    return {f"RAVDESS actors 11-20 ({len(ravdess)} clips)": ravdess,
            f"CREMA-D fixture ({len(cremad)} clips)": cremad,
            "demo clip (espeak)": [read_video_audio(REPO / "edge" / "assets" / "demo.mp4")]}


def speech_table(sets: dict[str, list[np.ndarray]]) -> list[str]:
    gate = VoiceGate(WINDOW)
    lines = ["| speech | windows | clean: voicing / energy | white 10 dB: voicing / energy "
             "| pink 10 dB: voicing / energy |", "|---|---|---|---|---|"]
    for name, clips in sets.items():
        new, old = pass_rates(gate.voiced, clips), pass_rates(energy_voiced, clips)
        n = sum(energy_voiced(w) for x in clips for w in gate_windows(x))
        lines.append(f"| {name} | {n} | " + " | ".join(f"{_pct(new[k])} / {_pct(old[k])}" for k in new) + " |")
    return lines


def noise_table(seeds: int) -> list[str]:
    gate = VoiceGate(WINDOW)
    lines = ["| noise | " + " | ".join(f"{v} dBFS" for v in LEVELS) + " | most voiced pairs |",
             "|---" * (len(LEVELS) + 2) + "|"]
    for kind in NOISES:
        cells, pairs = [], 0
        for level in LEVELS:
            windows = [noise(kind, WINDOW / 16000, level, seed) for seed in range(seeds)]
            new = 0
            for w in windows:
                new += not gate.voiced(w)
                pairs = max(pairs, gate.pairs)
            old = sum(not energy_voiced(w) for w in windows)
            cells.append(f"{new}/{seeds} ({old})")
        lines.append(f"| {kind} | " + " | ".join(cells) + f" | {pairs} |")
    return lines


def long_run_table(seconds: float = 1000.0) -> list[str]:
    """Every 0.5 s hop of a long stream of the noises that come closest: the tail, not the median."""
    gate = VoiceGate(WINDOW)
    lines = ["| noise, -20 dBFS | hops | voiced | windows reaching 3+ / 4+ pairs |", "|---|---|---|---|"]
    for kind in ("band", "fan", "brown"):
        x, voiced, pairs = noise(kind, seconds, -20, 7), 0, []
        for end in range(WINDOW, len(x) + 1, WINDOW // 4):
            voiced += gate.voiced(x[end - WINDOW:end])
            pairs.append(gate.pairs)
        pairs = np.asarray(pairs)
        close = f"{np.count_nonzero(pairs >= 3)} / {np.count_nonzero(pairs >= 4)}"
        lines.append(f"| {kind} | {len(pairs)} | {voiced} | {close} |")
    return lines


def mixture_table(seeds: int) -> list[str]:
    """Hum under a louder wobbling fan or pink noise: not a required case, a known limit."""
    gate, lines = VoiceGate(WINDOW), ["| mixture | rejected |", "|---|---|"]
    for hum, other in (("hum100", "fan"), ("hum50", "fan"), ("hum100", "pink")):
        windows = [noise(hum, WINDOW / 16000, -30, seed) + noise(other, WINDOW / 16000, -25, seed + 1)
                   for seed in range(seeds)]
        lines.append(f"| {hum} at -30 dBFS + {other} at -25 dBFS | "
                     f"{sum(not gate.voiced(w) for w in windows)}/{seeds} |")
    return lines


def _pct(x: float) -> str:
    return f"{int(x * 1000) / 10:.1f} %"  # truncated, never rounded up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=50, help="noise windows per kind and level")
    parser.add_argument("--per-actor", type=int, default=6, help="RAVDESS clips per actor")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    speech = read_audio(REPO / "edge" / "assets" / "demo.wav")[:WINDOW]
    p50, p99 = cost_ms(VoiceGate(WINDOW), speech)
    print(f"VoiceGate.voiced on a 2 s window: p50 {p50:.3f} ms, p99 {p99:.3f} ms\n")
    if (args.data / "ravdess_speech" / "labels.csv").is_file():
        print("\n".join(speech_table(speech_sets(args.data, args.per_actor))) + "\n")
    print("Rejected windows of 2 s, voicing gate (energy gate in brackets):\n")
    print("\n".join(noise_table(args.seeds)) + "\n")
    print("\n".join(long_run_table()) + "\n")
    print("\n".join(mixture_table(args.seeds)))


if __name__ == "__main__":
    main()
