"""FER2013-style class folders of face images (also any `<label>/*.png|jpg` tree).

In:  root/<label>/*.{png,jpg,...} (optionally root/train/<label>/...); folder names are
     label spellings (angry, fear, happy, ... or aliases such as 'surprised').
Out: list[Item] with `image` set. FER2013 has no identities, so each image is its own
     pseudo-speaker (its file stem). Images under unknown folders: one CorpusError.
"""
from __future__ import annotations

from pathlib import Path

from distill.data.items import Item, canonical_label, raise_if_problems
from edge.labels_csv import media_kind


def _class_dirs(root: Path) -> list[Path]:
    base = root / "train" if (root / "train").is_dir() and not any(
        canonical_label(p.name) for p in root.iterdir() if p.is_dir()) else root
    return sorted(p for p in base.iterdir() if p.is_dir())


def detect(root: Path) -> bool:
    dirs = _class_dirs(root)
    return bool(dirs) and any(canonical_label(d.name) for d in dirs) and any(
        media_kind(p) == "image" for d in dirs for p in d.iterdir())


def load(root: Path) -> list[Item]:
    items, problems = [], []
    for folder in _class_dirs(root):
        images = sorted(p for p in folder.iterdir() if media_kind(p) == "image")
        label = canonical_label(folder.name)
        if label is None:
            problems += [f"{p.relative_to(root)}: unknown label folder '{folder.name}'" for p in images[:1]]
            continue
        items += [Item(label=label, speaker=p.stem, corpus="fer2013", image=str(p)) for p in images]
    raise_if_problems(root, problems, "rename the folder to a label or remove it")
    return items
