"""Markdown table rows from held-out reports, for docs/students.md.

    python tools/report_table.py checkpoints/face-scored/teacher.json runs/face-kd-s0/face.json

Each file is a `students` json (`--score` or a finished training run): its "reports" hold one
report per held-out split (`distill.students.held_out_reports`). One row per file: accuracy /
UAR per split, macro-F1 per split, and the fear and disgust recall per test split, every
figure truncated to 4 places (docs never round up).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

RARE = ("fear", "disgust")


def truncated(x: float) -> str:
    """`x` cut (not rounded) to 4 decimal places: 0.80487 -> "0.8048"."""
    return f"{math.floor(x * 10000 + 1e-9) / 10000:.4f}"


def row(name: str, reports: dict) -> str:
    """One markdown row: name | acc / UAR per split | macro-F1s | rare-class recall on the test splits."""
    cells = [f"{truncated(r['accuracy'])} / {truncated(r['uar'])}" for r in reports.values()]
    f1 = ", ".join(truncated(r["macro_f1"]) for r in reports.values())
    rare = "; ".join(", ".join(truncated(r["per_class"][c]["recall"]) for c in RARE if c in r["per_class"])
                     for split, r in reports.items() if split.startswith("test"))
    return "| " + " | ".join([name, *cells, f1, rare]) + " |"


def header(reports: dict) -> str:
    """The header and rule lines for rows of `reports`' splits."""
    splits = list(reports)
    tests = "; ".join(s for s in splits if s.startswith("test"))
    names = " | ".join(splits)
    return (f"| model | {names} | macro-F1 ({', '.join(splits)}) | {'/'.join(RARE)} recall ({tests}) |\n"
            + "|" + "---|" * (len(splits) + 3))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("reports", nargs="+", type=Path, help="students json files with a 'reports' key")
    args = p.parse_args(argv)
    rows = []
    for path in args.reports:
        try:
            reports = json.loads(path.read_text())["reports"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(f"report_table: {path}: not a students json with 'reports' ({err}); "
                  "pass a `students --score` or training json", file=sys.stderr)
            return 2
        rows.append(row(path.parent.name if path.stem in ("face", "audio") else path.stem, reports))
    print(header(reports))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
