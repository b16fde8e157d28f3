"""Corpus loaders: every supported layout -> one list of `Item` records.

In:  a corpus folder (RAVDESS, CREMA-D, eNTERFACE'05, FER2013 class folders, or the generic
     data folder with labels.csv — DESIGN.md). `load_corpus(path)` detects the layout;
     labels.csv wins when present.
Out: list[Item] (canonical labels, absolute paths, speaker ids for speaker-independent
     splits). Media decoding (edge's own) and caching live in `distill.data.cache`.
"""
from __future__ import annotations

from pathlib import Path

from distill.data import cremad, enterface, fer2013, folder, ravdess
from distill.data.items import CorpusError, Item, canonical_label
from distill.data.splits import fold_split, read_split, speaker_folds, speakers, split_by_speaker, write_split

LOADERS = {"folder": folder, "ravdess": ravdess, "cremad": cremad, "enterface": enterface, "fer2013": fer2013}
"""Layout name -> module with detect(root) and load(root); auto tries them in this order."""

__all__ = ["Item", "CorpusError", "LOADERS", "canonical_label", "load_corpus", "speaker_folds",
           "split_by_speaker", "fold_split", "speakers", "write_split", "read_split"]


def load_corpus(path: str | Path, kind: str = "auto") -> list[Item]:
    """All items of the corpus at `path`; `kind` is 'auto' or a key of LOADERS."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise CorpusError(f"{root}: corpus folder not found (pass a folder with labels.csv or a known layout)")
    if kind != "auto" and kind not in LOADERS:
        raise CorpusError(f"unknown corpus kind '{kind}' (use auto or one of {sorted(LOADERS)})")
    loader = LOADERS[kind] if kind != "auto" else next((m for m in LOADERS.values() if m.detect(root)), None)
    if loader is None:
        raise CorpusError(f"{root}: no labels.csv and not a RAVDESS/CREMA-D/eNTERFACE/FER2013 layout "
                          "(add a labels.csv with path,label[,speaker] columns)")
    items = loader.load(root)
    if not items:
        raise CorpusError(f"{root}: no media files found for layout '{loader.__name__.rsplit('.', 1)[-1]}'")
    return items
