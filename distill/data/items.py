"""Corpus items and label spelling: the record every loader returns.

In:  raw label spellings and file paths found by a loader.
Out: `Item` records (canonical labels from `edge.settings.LABELS`, absolute paths) or one
`CorpusError` that lists every offending row at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge.errors import AvemoError, problem_list
from edge.settings import LABEL_ALIASES, LABELS, OTHER_LABELS


class CorpusError(AvemoError):
    """A corpus folder or labels file is malformed (unknown label, missing file/column)."""


@dataclass(frozen=True)
class Item:
    """One labelled (or unlabelled) recording: audio, video, a face image, or a pair."""

    label: str | None
    """Canonical label (edge.settings.LABELS) or None when unlabeled."""
    speaker: str
    """Speaker/actor id; splits are by speaker."""
    corpus: str
    """'ravdess', 'cremad', 'enterface', 'fer2013', 'synthetic', or the folder name."""
    audio: str | None = None
    video: str | None = None
    image: str | None = None

    @property
    def has_audio(self) -> bool:
        return self.audio is not None

    @property
    def has_visual(self) -> bool:
        return self.video is not None or self.image is not None


def canonical_label(raw: str) -> str | None:
    """Canonical spelling of `raw`, or None if it is not an emotion label we know.

    'calm' stays 'calm' (it is canonical) and OTHER_LABELS (EmoDB's boredom) are kept as they
    are; only non-canonical spellings are aliased.
    """
    name = raw.strip().lower()
    if name in LABELS or name in OTHER_LABELS:
        return name
    return LABEL_ALIASES.get(name)


def raise_if_problems(where: str | Path, problems: list[str], fix: str) -> None:
    """Raise one CorpusError naming `where` and the first offending rows, if any."""
    if problems:
        raise CorpusError(problem_list(where, problems, fix))
