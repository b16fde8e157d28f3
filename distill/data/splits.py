"""Speaker-independent splits: k folds of speaker ids, fixed seed, written to JSON.

In:  list[Item]. Out: lists of speaker ids, (train, val, test) item lists, split files
`{"name": [speaker, ...], ...}`. No speaker is ever in two parts of one split.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from distill.data.items import CorpusError, Item


def speakers(items: Iterable[Item]) -> list[str]:
    return sorted({it.speaker for it in items})


def speaker_folds(items: Sequence[Item], k: int = 5, seed: int = 0) -> list[list[str]]:
    """k disjoint, sorted lists of speaker ids; the same items and seed give the same folds.

    Speakers are shuffled and dealt round-robin corpus by corpus, so every corpus is spread
    over the k folds (a 20-actor corpus beside 28K FER2013 pseudo-speakers gets 4 per fold).
    """
    ids = speakers(items)
    if k < 2 or len(ids) < k:
        raise CorpusError(f"speaker_folds: need k >= 2 and at least k speakers, got k={k} and "
                          f"{len(ids)} speakers (use fewer folds or more speakers)")
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    dealt: set[str] = set()
    for corpus in sorted({it.corpus for it in items}):
        group = [s for s in speakers(it for it in items if it.corpus == corpus) if s not in dealt]
        for j in rng.permutation(len(group)):
            folds[len(dealt) % k].append(group[j])
            dealt.add(group[j])
    return [sorted(f) for f in folds]


def split_by_speaker(items: Sequence[Item], test_speakers: Iterable[str],
                     val_speakers: Iterable[str] = ()) -> tuple[list[Item], list[Item], list[Item]]:
    """(train, val, test): test/val speakers as given, every other speaker trains."""
    test, val = set(test_speakers), set(val_speakers)
    if test & val:
        raise CorpusError(f"split_by_speaker: speakers {sorted(test & val)} are in both val and test")
    train_items = [it for it in items if it.speaker not in test | val]
    val_items = [it for it in items if it.speaker in val]
    test_items = [it for it in items if it.speaker in test]
    return train_items, val_items, test_items


def fold_split(items: Sequence[Item], k: int, fold: int, seed: int = 0) -> tuple[list[Item], list[Item], list[Item]]:
    """Fold `fold` tests, fold `fold + 1` validates, the rest trains."""
    folds = speaker_folds(items, k, seed)
    return split_by_speaker(items, folds[fold % k], folds[(fold + 1) % k])


def write_split(path: str | Path, **named_speaker_lists: Iterable[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {name: sorted(ids) for name, ids in named_speaker_lists.items()}
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def read_split(path: str | Path) -> dict[str, list[str]]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CorpusError(f"{path}: cannot read split file ({err}); write it with write_split") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise CorpusError(f"{path}: a split file maps names to lists of speaker ids")
    return data
