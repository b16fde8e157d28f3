"""The one reader of a data folder's `labels.csv` (DESIGN.md "Data folder format").

In:  `folder/labels.csv`, UTF-8 (a BOM is fine): a header row, then one row per file. Columns:
     `label` and at least one of PATH_COLUMNS, optionally `speaker` and `corpus`. Any other
     column is metadata and is ignored, except an unknown `path_*` column: a misspelt path
     column would silently lose files, so it is an error. Column names and labels are read in
     lower case, spaces around cells are dropped, blank lines are skipped. Paths are relative
     to the folder (absolute paths are kept).
Out: one `LabelRow` per row: a known label (or '' when `unlabeled_ok`), at least one path,
     every path an existing audio, image or video file, no row repeating an earlier row's
     files and label. Otherwise one `MediaError` naming the table, every bad row by its row
     number as a spreadsheet shows it (the header is row 1), and the fix. Which rows and path
     columns to use is the caller's policy (edge.evaluate, distill.data.folder, distill.corpora).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from edge.errors import MediaError, problem_list
from edge.settings import LABEL_ALIASES, LABELS, OTHER_LABELS

LABELS_CSV = "labels.csv"
PATH_COLUMNS = ("path", "path_audio", "path_video", "path_image")
KNOWN_LABELS = frozenset((*LABELS, *LABEL_ALIASES, *OTHER_LABELS))
MEDIA_EXT = {"audio": (".wav", ".flac", ".mp3", ".ogg"),
             "image": (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"),
             "video": (".mp4", ".avi", ".flv", ".mkv", ".mov", ".webm")}
FORMAT = ("a data folder needs labels.csv: a header row path,label (or path_audio, path_video, path_image "
          "instead of path), then one row per file; see README, 'Evaluate on your data'")
ROW_FIX = (f"fix or delete those rows; paths are relative to the folder, labels are one of {' '.join(LABELS)} "
           f"{' '.join(OTHER_LABELS)} or an alias ({' '.join(a for a in LABEL_ALIASES if a not in LABELS)})")


@dataclass(frozen=True)
class LabelRow:
    """One checked row of labels.csv."""

    row: int
    """Row number in the file as a spreadsheet shows it (the header is row 1)."""
    label: str
    """Lower case: a label or alias of KNOWN_LABELS, or '' for an unlabeled row."""
    paths: dict[str, Path]
    """Path column -> existing media file, for the row's non-empty path cells (at least one)."""
    speaker: str = ""
    corpus: str = ""


def media_kind(path: str | Path) -> str | None:
    """'audio', 'image' or 'video' from the file extension, None when unknown."""
    ext = Path(path).suffix.lower()
    return next((kind for kind, exts in MEDIA_EXT.items() if ext in exts), None)


def read_labels(folder: str | Path, unlabeled_ok: bool = False) -> list[LabelRow]:
    """Every row of `folder/labels.csv`, checked as the module docstring says.

    Raises one MediaError for a missing, empty or unreadable file, a bad header, or bad rows
    (each with its first problem; all counted, the first few listed). `unlabeled_ok` lets a row
    leave its label empty.
    """
    folder = Path(folder)
    table = folder / LABELS_CSV
    (_, header), *records = _records(table)
    columns = _columns(table, header)
    if not records:
        raise MediaError(f"{table}: a header but no rows; add one row per file")
    rows, problems, first_seen = [], [], {}
    for number, cells in records:
        try:
            row = _row(folder, number, columns, cells, unlabeled_ok)
            _check_repeat(row, first_seen)
        except ValueError as err:
            problems.append(f"row {number}: {err}")
        else:
            rows.append(row)
    if problems:
        raise MediaError(problem_list(table, problems, ROW_FIX))
    return rows


def _records(table: Path) -> list[tuple[int, list[str]]]:
    """(row number, stripped cells) of every non-blank record, the header first."""
    if not table.is_file():
        raise MediaError(f"{table}: missing; {FORMAT}")
    try:
        with table.open(newline="", encoding="utf-8-sig") as f:
            stripped = enumerate(([cell.strip() for cell in cells] for cells in csv.reader(f)), start=1)
            records = [(number, cells) for number, cells in stripped if any(cells)]
    except UnicodeDecodeError as err:
        raise MediaError(f"{table}: not UTF-8 text ({err.reason}); save it as 'CSV UTF-8'") from err
    except OSError as err:
        raise MediaError(f"{table}: cannot read ({err.strerror or err}); check its permissions") from err
    if not records:
        raise MediaError(f"{table}: empty; {FORMAT}")
    return records


def _columns(table: Path, header: list[str]) -> list[str]:
    """Lower-case column names, after checking the header."""
    names = [name.lower() for name in header]
    missing = ([] if "label" in names else ["label"]) + ([] if set(PATH_COLUMNS) & set(names) else ["path"])
    if missing:
        raise MediaError(f"{table}: missing columns {missing} (header is {names}); {FORMAT}")
    repeated = sorted({name for name in names if name and names.count(name) > 1})
    if repeated:
        raise MediaError(f"{table}: columns {repeated} appear more than once in the header; "
                         "rename or delete the copies")
    unknown = [name for name in names if name.startswith("path_") and name not in PATH_COLUMNS]
    if unknown:
        raise MediaError(f"{table}: unknown path columns {unknown}; rename them to one of {', '.join(PATH_COLUMNS)}")
    return names


def _row(folder: Path, number: int, columns: list[str], cells: list[str], unlabeled_ok: bool) -> LabelRow:
    """The checked row; ValueError(problem) when it is bad (a short row's missing cells are empty)."""
    if len(cells) > len(columns):
        raise ValueError(f"{len(cells)} cells but the header has {len(columns)} (quote a cell that holds a comma)")
    cell = dict(zip(columns, cells))
    label = _label(cell.get("label", ""), unlabeled_ok)
    paths = {column: cell[column] for column in PATH_COLUMNS if cell.get(column)}
    if not paths:
        raise ValueError(f"no file in {' or '.join(c for c in PATH_COLUMNS if c in columns)}")
    for rel in paths.values():
        _check_file(folder / rel, rel)
    return LabelRow(number, label, {column: folder / rel for column, rel in paths.items()},
                    cell.get("speaker", ""), cell.get("corpus", ""))


def _label(raw: str, unlabeled_ok: bool) -> str:
    label = raw.lower()
    if not label and not unlabeled_ok:
        raise ValueError("empty label")
    if label and label not in KNOWN_LABELS:
        raise ValueError(f"unknown label {label!r}")
    return label


def _check_file(path: Path, rel: str) -> None:
    if media_kind(path) is None:
        raise ValueError(f"'{rel}' is not audio, an image or a video "
                         f"({' '.join(ext for exts in MEDIA_EXT.values() for ext in exts)})")
    if not path.is_file():
        raise ValueError(f"missing file '{rel}'")


def _check_repeat(row: LabelRow, first_seen: dict[tuple, int]) -> None:
    """A row with the same files and label as an earlier one would count twice."""
    first = first_seen.setdefault((row.label, *row.paths.items()), row.row)
    if first != row.row:
        raise ValueError(f"same files and label as row {first}")
