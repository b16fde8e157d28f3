"""eNTERFACE'05 audio-visual emotion database, read from its folder layout.

In:  `subject N/<emotion>/sentence M/*.avi` (subject 6 has no sentence level:
     `subject 6/<emotion>/*.avi`); emotion folders anger disgust fear happiness sadness surprise.
Out: list[Item] (audio and video are the same .avi; speaker 'subject N'); clips under an
     unknown emotion folder are listed in one CorpusError.
"""
from __future__ import annotations

import re
from pathlib import Path

from distill.data.items import Item, canonical_label, raise_if_problems

SUBJECT = re.compile(r"^subject\s*(\d+)$", re.IGNORECASE)


def _subjects(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and SUBJECT.match(p.name))


def detect(root: Path) -> bool:
    return any(any(s.rglob("*.avi")) for s in _subjects(root))


def load(root: Path) -> list[Item]:
    items, problems = [], []
    for subject in _subjects(root):
        speaker = f"subject {int(SUBJECT.match(subject.name).group(1))}"
        for clip in sorted(subject.rglob("*.avi")):
            folder = clip.relative_to(subject).parts[0]
            label = canonical_label(folder)
            if label is None or len(clip.relative_to(subject).parts) < 2:
                problems.append(f"{clip.relative_to(root)}: '{folder}' is not an emotion folder")
                continue
            items.append(Item(label=label, speaker=speaker, corpus="enterface", audio=str(clip), video=str(clip)))
    raise_if_problems(root, problems, "put clips under subject N/<emotion>/[sentence M/]")
    return items
