"""RAVDESS, read from its file names (no labels.csv needed).

In:  a folder tree of `MM-VV-EE-II-SS-RR-AA.{wav,flac,mp4}` files (modality 01 audio-video,
     02 video-only, 03 audio-only; vocal channel 01 speech, 02 song; emotion 01..08; actor AA).
Out: list[Item] with speaker 'Actor_AA'; audio-video mp4 files carry the same path as audio
     and video (the audio track is decoded from the container). Names that do not parse
     are listed in one CorpusError.
"""
from __future__ import annotations

import re
from pathlib import Path

from distill.data.items import Item, raise_if_problems
from edge.labels_csv import media_kind

EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fear", "disgust", "surprise")
"""Emotion code 01..08 in file-name order."""
NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and media_kind(p) in ("audio", "video"))


def detect(root: Path) -> bool:
    return any(NAME.match(p.stem) for p in _files(root)[:50])


def load(root: Path) -> list[Item]:
    items, problems = [], []
    for path in _files(root):
        try:
            items.append(parse(path))
        except ValueError as err:
            problems.append(f"{path.relative_to(root)}: {err}")
    raise_if_problems(root, problems, "RAVDESS names are MM-VV-EE-II-SS-RR-AA with emotion 01..08")
    return items


def parse(path: Path) -> Item:
    m = NAME.match(path.stem)
    if m is None:
        raise ValueError("name is not MM-VV-EE-II-SS-RR-AA")
    modality, emotion, actor = int(m.group(1)), int(m.group(3)), m.group(7)
    if not 1 <= emotion <= len(EMOTIONS) or modality not in (1, 2, 3):
        raise ValueError(f"unknown modality {modality:02d} or emotion {emotion:02d}")
    p = str(path)
    paths = {1: {"audio": p, "video": p}, 2: {"video": p}, 3: {"audio": p}}[modality]
    return Item(label=EMOTIONS[emotion - 1], speaker=f"Actor_{actor}", corpus="ravdess", **paths)
