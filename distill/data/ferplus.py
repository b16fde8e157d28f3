"""FER+ crowd votes for the FER2013 training faces (Barsoum et al., ICMI 2016; MIT labels).

In:  `<fer2013 train folder>/ferplus_votes.csv` (columns path, label, ferplus_file, match_rms,
     then the votes of 10 annotators for neutral happiness surprise sadness anger disgust fear
     contempt unknown not_a_face; rows the votes could not be matched to have empty columns).
Out: `vote_targets(items, labels)` -> (targets float32 [N, C]: each face's vote distribution
     over `labels` (contempt and unknown votes left out, renormalized; a face with no usable
     vote gets its original label as a one-hot), not_a_face bool [N]: the "not a face" votes
     are the most common answer).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from distill.data.items import Item

VOTES_CSV = "ferplus_votes.csv"
VOTE_LABELS = {"neutral": "neutral", "happiness": "happy", "surprise": "surprise", "sadness": "sad",
               "anger": "angry", "disgust": "disgust", "fear": "fear"}
"""FER+ column -> canonical label (contempt, unknown and not_a_face map to none)."""
OTHER_COLUMNS = ("contempt", "unknown", "not_a_face")


def votes_file(items: Sequence[Item]) -> Path | None:
    """The votes table beside the items' class folders (the FER2013 train folder), if any."""
    if not items or not items[0].image:
        return None
    path = Path(items[0].image).parent.parent / VOTES_CSV
    return path if path.is_file() else None


def read_votes(path: Path) -> dict[str, np.ndarray]:
    """Relative image path -> the 10 vote counts (VOTE_LABELS then OTHER_COLUMNS); matched rows only."""
    columns = list(VOTE_LABELS) + list(OTHER_COLUMNS)
    with open(path, newline="", encoding="utf-8") as f:
        return {row["path"]: np.array([float(row[c]) for c in columns], np.float32)
                for row in csv.DictReader(f) if row[columns[0]] != ""}


def vote_targets(items: Sequence[Item], labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(vote distributions [N, C], not-a-face mask [N]) for FER2013 items, or None without votes."""
    path = votes_file(items)
    if path is None:
        return None
    votes = read_votes(path)
    order = [labels.index(VOTE_LABELS[c]) for c in VOTE_LABELS]
    targets = np.zeros((len(items), len(labels)), np.float32)
    not_a_face = np.zeros(len(items), bool)
    for i, it in enumerate(items):
        v = votes.get(f"{Path(it.image).parent.name}/{Path(it.image).name}")
        emotion = v[: len(order)] if v is not None else None
        if emotion is None or emotion.sum() == 0:
            targets[i, labels.index(it.label)] = 1.0
            continue
        targets[i, order] = emotion / emotion.sum()
        not_a_face[i] = v[-1] > v[:-1].max()
    return targets, not_a_face
