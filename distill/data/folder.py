"""Generic data folder (DESIGN.md "Data folder format"): `labels.csv` at the root.

In:  a folder with labels.csv, columns `path,label` (+ optional `speaker,corpus`) or
     `path_audio,path_video,label,...` (a `path_image` column is also read); paths are
     relative to the folder. An empty label cell means "unlabeled".
Out: list[Item], or one CorpusError listing every bad row (unknown label, missing file,
     unknown file type) and, for a bad header, the missing columns.
"""
from __future__ import annotations

import csv
from pathlib import Path

from distill.data.items import CorpusError, Item, canonical_label, media_kind, missing_files, raise_if_problems

LABELS_CSV = "labels.csv"
PATH_COLUMNS = ("path_audio", "path_video", "path_image")


def detect(root: Path) -> bool:
    return (root / LABELS_CSV).is_file()


def load(root: Path) -> list[Item]:
    csv_path = root / LABELS_CSV
    rows = _read_rows(csv_path)
    items, problems = [], []
    for line_no, row in enumerate(rows, start=2):
        try:
            item = _row_item(root, row)
        except ValueError as err:
            problems.append(f"row {line_no}: {err}")
            continue
        problems += [f"row {line_no}: missing file '{p}'" for p in missing_files(item)]
        items.append(item)
    raise_if_problems(csv_path, problems, "fix or delete those rows")
    return items


def _read_rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        rows = list(reader)
    has_path = "path" in header or any(c in header for c in PATH_COLUMNS)
    missing = [c for c, ok in (("label", "label" in header), ("path or path_audio/path_video", has_path)) if not ok]
    if missing:
        raise CorpusError(f"{csv_path}: missing columns {missing} (header is {header}; "
                          "see DESIGN.md 'Data folder format')")
    return rows


def _row_item(root: Path, row: dict[str, str]) -> Item:
    raw = (row.get("label") or "").strip()
    label = canonical_label(raw) if raw else None
    if raw and label is None:
        raise ValueError(f"unknown label '{raw}'")
    paths = _row_paths(root, row)
    if not paths:
        raise ValueError("no media path")
    speaker = (row.get("speaker") or "").strip() or Path(next(iter(paths.values()))).stem
    corpus = (row.get("corpus") or "").strip() or root.name
    return Item(label=label, speaker=speaker, corpus=corpus, **paths)


def _row_paths(root: Path, row: dict[str, str]) -> dict[str, str]:
    """{'audio'|'video'|'image': absolute path} from the path_* columns, else from `path`."""
    paths = {col[len("path_"):]: str(root / row[col].strip())
             for col in PATH_COLUMNS if (row.get(col) or "").strip()}
    if paths:
        return paths
    path = (row.get("path") or "").strip()
    if not path:
        return {}
    kind = media_kind(path)
    if kind is None:
        raise ValueError(f"unknown file type '{path}'")
    return {kind: str(root / path)}
