"""Markdown table rows from held-out reports, for docs/students.md.

    python tools/report_table.py checkpoints/face-scored/teacher.json runs/face-kd-s0/face.json

Each file is a `students` json (`--score` or a finished training run): its "reports" hold one
report per held-out split (`distill.students.held_out_reports`). One row per file: accuracy /
UAR per split, macro-F1 per split, and the fear and disgust recall per test split, every
figure truncated to 4 places (docs never round up). The columns are every file's splits in
the order first seen; a file without one of them leaves that cell empty.
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


def row(name: str, reports: dict, splits: list[str]) -> str:
    """One markdown row over `splits`: name | acc / UAR per split | macro-F1s | rare-class recall
    on the test splits; a split this file has no report for is an empty cell (or "-" in a list)."""
    cells = [f"{truncated(reports[s]['accuracy'])} / {truncated(reports[s]['uar'])}" if s in reports else ""
             for s in splits]
    f1 = ", ".join(truncated(reports[s]["macro_f1"]) if s in reports else "-" for s in splits)
    rare = "; ".join(", ".join(truncated(reports[s]["per_class"][c]["recall"]) for c in RARE
                               if c in reports[s]["per_class"]) if s in reports else "-"
                     for s in splits if s.startswith("test"))
    return "| " + " | ".join([name, *cells, f1, rare]) + " |"


def header(splits: list[str]) -> str:
    """The header and rule lines for rows over `splits`."""
    tests = "; ".join(s for s in splits if s.startswith("test"))
    names = " | ".join(splits)
    return (f"| model | {names} | macro-F1 ({', '.join(splits)}) | {'/'.join(RARE)} recall ({tests}) |\n"
            + "|" + "---|" * (len(splits) + 3))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("reports", nargs="+", type=Path, help="students json files with a 'reports' key")
    args = p.parse_args(argv)
    named = []
    for path in args.reports:
        try:
            reports = json.loads(path.read_text())["reports"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(f"report_table: {path}: not a students json with 'reports' ({err}); "
                  "pass a `students --score` or training json", file=sys.stderr)
            return 2
        named.append((path.parent.name if path.stem in ("face", "audio") else path.stem, reports))
    splits = list(dict.fromkeys(split for _, reports in named for split in reports))  # every file's, in order
    print(header(splits))
    print("\n".join(row(name, reports, splits) for name, reports in named))
    return 0


if __name__ == "__main__":
    sys.exit(main())
