"""CREMA-D, read from its file names (no labels.csv needed).

In:  a folder tree with `ACTOR_SENTENCE_EMO_LEVEL.{wav,mp3,flv,mp4}` files, e.g.
     AudioWAV/1001_DFA_ANG_XX.wav and VideoFlash/1001_DFA_ANG_XX.flv (EMO: ANG DIS FEA HAP
     NEU SAD). Files with the same stem are one clip: a wav/mp3 beside a video becomes its
     audio, a video alone gives both (its own audio track).
Out: list[Item] with speaker = actor id; bad names are listed in one CorpusError.
"""
from __future__ import annotations

import re
from pathlib import Path

from distill.data.items import Item, raise_if_problems
from edge.labels_csv import media_kind

EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
AUDIO_PREFERENCE = (".wav", ".flac", ".mp3")


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and media_kind(p) in ("audio", "video"))


def detect(root: Path) -> bool:
    return any(NAME.match(p.stem) for p in _files(root)[:50])


def load(root: Path) -> list[Item]:
    clips: dict[str, list[Path]] = {}
    problems = []
    for path in _files(root):
        m = NAME.match(path.stem)
        if m is None or m.group(3) not in EMOTIONS:
            problems.append(f"{path.relative_to(root)}: not ACTOR_SENTENCE_EMO_LEVEL with EMO in {sorted(EMOTIONS)}")
            continue
        clips.setdefault(path.stem, []).append(path)
    raise_if_problems(root, problems, "rename or remove those files")
    return [_clip_item(stem, paths) for stem, paths in sorted(clips.items())]


def _clip_item(stem: str, paths: list[Path]) -> Item:
    actor, _, emo, _ = stem.split("_")
    videos = [p for p in paths if media_kind(p) == "video"]
    audios = sorted((p for p in paths if media_kind(p) == "audio"), key=lambda p: AUDIO_PREFERENCE.index(p.suffix.lower())
                    if p.suffix.lower() in AUDIO_PREFERENCE else len(AUDIO_PREFERENCE))
    video = str(videos[0]) if videos else None
    audio = str(audios[0]) if audios else video
    return Item(label=EMOTIONS[emo], speaker=actor, corpus="cremad", audio=audio, video=video)
