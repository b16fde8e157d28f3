"""Generic data folder (DESIGN.md "Data folder format"): `labels.csv` at the root.

In:  a folder whose labels.csv `edge.labels_csv` reads and checks: `path,label` (+ optional
     `speaker,corpus`), or `path_audio`/`path_video`/`path_image` for paired rows. An empty
     label cell means "unlabeled".
Out: list[Item] (speaker defaults to the file name, corpus to the folder name), or one
     CorpusError with the reader's message: the bad header, or every bad row.
"""
from __future__ import annotations

from pathlib import Path

from distill.data.items import CorpusError, Item, canonical_label
from edge.errors import MediaError
from edge.labels_csv import LABELS_CSV, LabelRow, media_kind, read_labels


def detect(root: Path) -> bool:
    return (root / LABELS_CSV).is_file()


def load(root: Path) -> list[Item]:
    try:
        rows = read_labels(root, unlabeled_ok=True)
    except MediaError as err:
        raise CorpusError(str(err)) from err
    return [_item(root, row) for row in rows]


def _item(root: Path, row: LabelRow) -> Item:
    media = _media(row.paths)
    speaker = row.speaker or Path(next(iter(media.values()))).stem
    return Item(label=canonical_label(row.label), speaker=speaker, corpus=row.corpus or root.name, **media)


def _media(paths: dict[str, Path]) -> dict[str, str]:
    """{'audio'|'video'|'image': path} from the path_* cells, else from `path` by its file type."""
    typed = {column[len("path_"):]: str(path) for column, path in paths.items() if column != "path"}
    return typed or {media_kind(paths["path"]): str(paths["path"])}
