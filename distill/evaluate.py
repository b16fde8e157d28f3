"""`python -m distill.evaluate`: score a teacher checkpoint or an exported bundle on a data folder.

In:  `--model` (teacher .pt, or a bundle folder/manifest that `edge.bundle.load_bundle`
     reads), `--data` (any layout `load_corpus` reads), optionally `--split FILE [--fold K]`
     to score only held-out speakers (the split file written by `distill.train`: key
     `test`, or `fold_K` with --fold).
Out: JSON report {modality: classification_report + label_mapping + per_speaker} for each
     modality the model and data allow ("audio", "face", "fused"), and a confusion-matrix
     PNG per modality (`--plot OUT.png` -> OUT.audio.png, ...). The metric math is
     edge/metrics.py; truth labels the model lacks are mapped by `edge.evaluate.score`
     (calm -> neutral) or left out, and the mapping is reported.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from distill.data import Item, load_corpus, read_split
from distill.data.batches import TeacherData, collate, prepare
from distill.data.cache import load_faces, load_waveforms
from distill.models.teacher import Teacher, load_teacher
from edge.features import window_samples
from edge.errors import AvemoError
from edge.evaluate import score
from edge.metrics import format_report, plot_confusion

OUTPUT_KEYS = {"audio_logits": "audio", "face_logits": "face", "fused_logits": "fused"}


@torch.no_grad()
def teacher_predictions(model: Teacher, data: TeacherData, device: str = "cpu",
                        batch_size: int = 64) -> dict[str, list[int | None]]:
    """Per modality, the predicted label index of each item (None where it does not apply)."""
    model.eval()
    n = window_samples(model.config.window_s)
    preds: dict[str, list[int | None]] = {m: [None] * len(data.items) for m in OUTPUT_KEYS.values()}
    for kind in ((True, False), (False, True), (True, True)):
        idx = [i for i in range(len(data.items)) if (data.waves[i] is not None, data.faces[i] is not None) == kind]
        for s in range(0, len(idx), batch_size):
            rows = idx[s:s + batch_size]
            batch = collate(data, [(i if kind[0] else None, i if kind[1] else None) for i in rows], n, None)
            out = model(*(batch[k].to(device) if k in batch else None for k in ("wave", "faces")))
            for key, modality in OUTPUT_KEYS.items():
                for i, p in zip(rows, out[key].argmax(1).tolist() if key in out else []):
                    preds[modality][i] = p
    return preds


def report_for(items: Sequence[Item], predicted: Sequence[str | None], model_labels: Sequence[str]) -> dict | None:
    """Scored report with a per-speaker breakdown over the labeled items that have a prediction."""
    rows = [(it, p) for it, p in zip(items, predicted) if p is not None and it.label]
    if not rows:
        return None
    report = score([it.label for it, _ in rows], [p for _, p in rows], tuple(model_labels))
    report["per_speaker"] = {}
    for spk in sorted({it.speaker for it, _ in rows}):
        mine = [(it.label, p) for it, p in rows if it.speaker == spk]
        try:
            sub = score([t for t, _ in mine], [p for _, p in mine], tuple(model_labels))
        except AvemoError:
            continue
        report["per_speaker"][spk] = {k: sub[k] for k in ("n", "accuracy", "uar", "macro_f1")}
    return report


def evaluate_teacher(model: Teacher, data: TeacherData, device: str = "cpu") -> dict[str, dict]:
    preds = teacher_predictions(model, data, device)
    reports = {m: report_for(data.items, [model.labels[p] if p is not None else None for p in ps], model.labels)
               for m, ps in preds.items()}
    return {m: r for m, r in reports.items() if r is not None}


def bundle_predictions(path: str | Path, items: Sequence[Item], cache_dir: str | None) -> tuple[str, list[str | None], tuple]:
    """(modality, predicted label per item or None, labels) for an exported bundle. Audio is
    answered by `avemo-edge eval`'s own scorer (edge.evaluate.AudioReplay: the runtime's replay
    loop, gate and voiced-hop pooling); a file it gives no answer for is NO_ANSWER (an error)."""
    from edge.backends import DEFAULT_ORDER
    from edge.bundle import load_bundle
    from edge.evaluate import NO_ANSWER, scorer
    from edge.face import standardize_crops
    from edge.pipeline import Model
    from edge.profiles import load_profile
    bundle = load_bundle(path)
    predicted: list[str | None] = [None] * len(items)
    if bundle.modality == "audio":
        replay = scorer(path, "audio", load_profile("x86"))
        for i, wave in zip(*_audio_of(items, cache_dir)):
            probs = replay(wave)
            predicted[i] = NO_ANSWER if probs is None else bundle.labels[int(np.argmax(probs))]
        return bundle.modality, predicted, bundle.labels
    model = Model(bundle, backend="auto", backend_order=DEFAULT_ORDER, threads=1)
    idx = [i for i, it in enumerate(items) if it.image or it.video]
    faces = load_faces([items[i] for i in idx], size=bundle.face.size, cache_dir=cache_dir)
    for i, x in zip(idx, standardize_crops(faces, bundle.face)[:, None, None]):
        predicted[i] = bundle.labels[int(np.argmax(model(np.ascontiguousarray(x, dtype=np.float32))))]
    return bundle.modality, predicted, bundle.labels


def _audio_of(items: Sequence[Item], cache_dir: str | None) -> tuple[list[int], list[np.ndarray]]:
    idx = [i for i, it in enumerate(items) if it.audio]
    return idx, load_waveforms([items[i] for i in idx], cache_dir)


def select_speakers(items: list[Item], split: str | None, fold: int | None) -> list[Item]:
    if split is None:
        return items
    key = "test" if fold is None else f"fold_{fold}"
    table = read_split(split)
    if key not in table:
        raise AvemoError(f"{split}: no '{key}' entry (it has {sorted(table)}); pick another --fold")
    keep = set(table[key])
    chosen = [it for it in items if it.speaker in keep]
    if not chosen:
        raise AvemoError(f"{split}: none of the '{key}' speakers occurs in the data; wrong --data or split file?")
    return chosen


def evaluate(model_path: str | Path, data: str | Path, split: str | None = None, fold: int | None = None,
             cache_dir: str | None = "cache", device: str = "cpu") -> dict:
    """Reports per modality for a teacher checkpoint or a bundle on a data folder."""
    items = select_speakers(load_corpus(data), split, fold)
    if Path(model_path).suffix == ".pt":
        model, meta = load_teacher(model_path, device)
        cfg = model.config
        reports = evaluate_teacher(model, prepare(items, cfg.labels, cfg.frames, cfg.face_size, cache_dir), device)
        name = f"teacher:{model_path}"
    else:
        modality, predicted, labels = bundle_predictions(model_path, items, cache_dir)
        reports = {m: r for m, r in {modality: report_for(items, predicted, labels)}.items() if r is not None}
        name = f"bundle:{model_path}"
    if not reports:
        raise AvemoError(f"{data}: no labeled items the model can score (check the modality and labels)")
    return {"model": name, "data": str(data), "split": split, "fold": fold, "reports": reports}


def write_outputs(result: dict, json_path: str | None, plot: str | None) -> None:
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=1) + "\n")
    if plot:
        base = Path(plot)
        for modality, report in result["reports"].items():
            plot_confusion(report, base.with_suffix(f".{modality}{base.suffix or '.png'}"), title=f"{modality}: {result['model']}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m distill.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="teacher checkpoint (.pt) or bundle folder")
    p.add_argument("--data", required=True, help="data folder (labels.csv or a known corpus layout)")
    p.add_argument("--split", help="split JSON (from distill.train) to score only its held-out speakers")
    p.add_argument("--fold", type=int, help="score speakers of fold K of --split instead of 'test'")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--plot", help="confusion matrix PNG path (one file per modality)")
    p.add_argument("--cache", default="cache", help="decode cache folder")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = evaluate(args.model, args.data, args.split, args.fold, args.cache, args.device)
        write_outputs(result, args.json, args.plot)
    except AvemoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for modality, report in result["reports"].items():
        print(f"[{modality}]\n{format_report(report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
