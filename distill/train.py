"""`python -m distill.train teacher|students`: training stages, stage 1 being the teacher.

`students` is distill/students.py's `students_main` (the student recipes); the rest of this
module is the audio-visual teacher (`teacher`, `ablation`), described below.

In:  one or more corpora (`--data`, any layout `distill.data.load_corpus` reads), split by
     speaker (`--folds K --fold F`: fold F tests, fold F+1 validates; or `--split FILE`).
Out: `--out` folder: teacher.pt (best validation UAR), last.pt (resume point), log.csv,
     log.jsonl, split.json, meta.json (which data trained which branch, metrics).

What trains what (also written into the checkpoint's meta['trained_on']):
- audio-visual items: all heads, Soft-HGR over (audio, visual) on every row and
  (audio, label), (visual, label) on labeled rows; `--hide-labels FRAC` makes a fraction
  unlabeled, and those add only the (audio, visual) term (semi-supervised);
- audio-only / face-only items: their branch (classification + HGR against the label
  embedding); unlabeled unimodal items have no loss and are left out;
- `--pair-cross-corpus`: each labeled audio-only item is paired with a random face-only
  item of the same label, re-drawn every epoch, and the pair trains like an audio-visual
  item (fusion head and the (audio, visual) HGR term included).
Determinism: the epoch plan comes from numpy's default_rng([seed, epoch]); torch is seeded
once and its RNG state is saved in last.pt, so `--resume` continues the same run.
Data parallel: `torchrun --nproc_per_node N -m distill.train teacher ...` (WORLD_SIZE set):
every rank builds the same plan and takes a 1/N slice of each batch; gradients are
averaged by DDP (gloo on CPU, NCCL on CUDA); rank 0 alone writes logs and checkpoints.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from distill.data import Item, load_corpus, read_split, speaker_folds, split_by_speaker, write_split
from distill.data.batches import TeacherData, Unit, collate, prepare
from distill.losses import hgr_three_way
from distill.models.teacher import Teacher, TeacherConfig, read_checkpoint, save_teacher
from edge.features import window_samples
from edge.errors import AvemoError
from edge.settings import LABELS, OTHER_LABELS


def base_units(data: TeacherData) -> list[Unit]:
    """Every item as a unit; unlabeled unimodal items are left out (they carry no loss)."""
    units = []
    for i, (w, f, y) in enumerate(zip(data.waves, data.faces, data.y)):
        if w is not None and f is not None:
            units.append((i, i))
        elif y >= 0:
            units.append((i if w is not None else None, i if f is not None else None))
    return units


def cross_corpus_pairs(data: TeacherData, units: list[Unit], rng: np.random.Generator) -> list[Unit]:
    """Audio-only labeled units paired with a random face-only unit of the same label."""
    faces_by_label: dict[int, list[int]] = {}
    for a, v in units:
        if a is None:
            faces_by_label.setdefault(int(data.y[v]), []).append(v)
    paired = []
    for a, v in units:
        pool = faces_by_label.get(int(data.y[a]), []) if v is None else []
        paired.append((a, int(rng.choice(pool))) if pool else (a, v))
    return paired


def epoch_plan(data: TeacherData, batch_size: int, seed: int, epoch: int, pair: bool, cap: int) -> list[list[Unit]]:
    """Batches of same-kind units (audio-visual, audio, face), shuffled; same on every rank."""
    rng = np.random.default_rng([seed, epoch])
    units = base_units(data)
    if pair:
        units = cross_corpus_pairs(data, units, rng)
    groups: dict[tuple[bool, bool], list[Unit]] = {}
    for u in units:
        groups.setdefault((u[0] is not None, u[1] is not None), []).append(u)
    batches = []
    for group in groups.values():
        order = rng.permutation(len(group))[: cap or None]
        batches += [[group[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def batch_loss(model: torch.nn.Module, batch: dict, hgr_weight: float) -> tuple[torch.Tensor, dict]:
    """Classification on labeled rows (every head present) minus hgr_weight * Soft-HGR."""
    y = batch["y"]
    out = model(batch.get("wave"), batch.get("faces"), y)
    mask = y >= 0
    heads = [k for k in out if k.endswith("logits")] if bool(mask.any()) else []
    ce = sum((F.cross_entropy(out[k][mask], y[mask]) for k in heads), torch.zeros((), device=y.device))
    hgr = hgr_three_way(out.get("audio_emb"), out.get("face_emb"), out["label_emb"], mask) if hgr_weight else ce * 0.0
    return ce - hgr_weight * hgr, {"ce": float(ce.detach()), "hgr": float(hgr.detach())}


def hide_labels(items: list[Item], frac: float, seed: int) -> list[Item]:
    """Copy of items with labels removed from a random `frac` of them."""
    if frac <= 0:
        return items
    hidden = set(np.random.default_rng([seed, 7919]).permutation(len(items))[: int(round(frac * len(items)))].tolist())
    return [Item(None, it.speaker, it.corpus, it.audio, it.video, it.image) if i in hidden else it
            for i, it in enumerate(items)]


# --- run setup ------------------------------------------------------------------------

def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m distill.train teacher", description="Train the audio-visual teacher.")
    p.add_argument("--data", action="append", required=True, help="corpus folder (repeat for several)")
    p.add_argument("--out", required=True, help="run folder (checkpoints and logs)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--no-hgr", action="store_true", help="classification losses only (ablation)")
    p.add_argument("--hgr-weight", type=float, default=0.1)
    p.add_argument("--hide-labels", type=float, default=0.0, metavar="FRAC", help="make FRAC of training items unlabeled")
    p.add_argument("--pair-cross-corpus", action="store_true", help="label-matched audio/face pairs across corpora")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--split-seed", type=int, default=0, help="seed of the speaker folds (kept apart from --seed)")
    p.add_argument("--fold", type=int, default=0, help="fold F tests, fold F+1 validates")
    p.add_argument("--split", help="split JSON with 'test' and 'val' speaker lists (overrides --folds)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-per-epoch", type=int, default=0, help="cap units per kind per epoch (0: all)")
    p.add_argument("--frames", type=int, default=TeacherConfig.frames, help="face frames per video clip")
    p.add_argument("--window", type=float, default=TeacherConfig.window_s, help="audio crop, seconds")
    p.add_argument("--cache", default="cache", help="decode cache folder")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return p.parse_args(argv)


def load_items(paths: Sequence[str]) -> list[Item]:
    return [it for path in paths for it in load_corpus(path)]


def make_split(items: list[Item], args: argparse.Namespace) -> dict[str, list[str]]:
    """{'test', 'val', 'fold_0'...}: speaker lists, from --split or from k speaker folds."""
    if args.split:
        table = read_split(args.split)
        return {"test": table.get("test", []), "val": table.get("val", [])}
    folds = speaker_folds(items, args.folds, args.split_seed)
    named = {f"fold_{i}": f for i, f in enumerate(folds)}
    return {"test": folds[args.fold % args.folds], "val": folds[(args.fold + 1) % args.folds], **named}


def model_labels(items: Sequence[Item]) -> tuple[str, ...]:
    """The labels present in the training items, in canonical order."""
    present = {it.label for it in items if it.label}
    return tuple(label for label in (*LABELS, *OTHER_LABELS) if label in present)


def describe(items: Sequence[Item], args: argparse.Namespace, n_hidden: int) -> dict:
    """Which data trained which part: written into meta.json and the checkpoint."""
    def corpora(pred) -> dict[str, int]:
        counts: dict[str, int] = {}
        for it in items:
            if pred(it):
                counts[it.corpus] = counts.get(it.corpus, 0) + 1
        return counts
    av = corpora(lambda it: it.has_audio and it.has_visual)
    pairs = "label-matched cross-corpus pairs re-drawn each epoch: audio " \
            f"{corpora(lambda it: it.has_audio and not it.has_visual and it.label)} x faces " \
            f"{corpora(lambda it: it.has_visual and not it.has_audio and it.label)}" if args.pair_cross_corpus else None
    return {"audio_branch": corpora(lambda it: it.has_audio), "visual_branch": corpora(lambda it: it.has_visual),
            "audio_visual_pairs": {"true_pairs": av, "cross_corpus": pairs},
            "fusion_head": "trained" if av or pairs else "untrained (no audio-visual data)",
            "hgr": None if args.no_hgr else {"weight": args.hgr_weight, "terms": "audio-visual, audio-label, visual-label"},
            "hidden_labels": {"fraction": args.hide_labels, "items": n_hidden}}


class Run:
    """One teacher training run: data, model, optimizer, logs, checkpoints."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.out = args, Path(args.out)
        self.rank, self.world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        self.device = self._init_device()
        torch.manual_seed(args.seed)
        items = load_items(args.data)
        self.split = make_split(items, args)
        train, val, test = split_by_speaker(items, self.split["test"], self.split["val"])
        train = hide_labels(train, args.hide_labels, args.seed)
        config = TeacherConfig(labels=model_labels(train), frames=args.frames, window_s=args.window)
        self.train_data = prepare(train, config.labels, config.frames, config.face_size, args.cache)
        self.val_data = prepare(val, config.labels, config.frames, config.face_size, args.cache)
        self.meta = {"trained_on": describe(train, args, sum(1 for it in train if not it.label)),
                     "data": list(args.data), "split": {k: len(v) for k, v in self.split.items()},
                     "items": {"train": len(train), "val": len(val), "test": len(test)}, "args": vars(args)}
        self.core = Teacher(config).to(self.device)
        self.model = self._wrap(self.core)
        self.opt = torch.optim.AdamW(self.core.parameters(), lr=args.lr, weight_decay=1e-4)
        self.start, self.history, self.best = 0, [], -1.0

    def _init_device(self) -> str:
        torch.set_num_threads(self.args.threads)
        if self.args.device == "cuda" and not torch.cuda.is_available():
            raise AvemoError("--device cuda: no CUDA device visible; use --device cpu")
        if self.world == 1:
            return self.args.device
        torch.distributed.init_process_group("nccl" if self.args.device == "cuda" else "gloo")
        if self.args.device == "cuda":
            torch.cuda.set_device(self.local_rank)
            return f"cuda:{self.local_rank}"
        return "cpu"

    @property
    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", 0))

    def _wrap(self, model: Teacher) -> torch.nn.Module:
        if self.world == 1:
            return model
        ids = [self.local_rank] if self.args.device == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- training -----------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> dict:
        from tqdm import tqdm
        args = self.args
        self.model.train()
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * epoch / max(1, args.epochs)))
        for group in self.opt.param_groups:
            group["lr"] = lr
        plan = epoch_plan(self.train_data, args.batch_size * self.world, args.seed, epoch, args.pair_cross_corpus,
                          args.max_per_epoch)
        rng = np.random.default_rng([args.seed, epoch, self.rank])
        n, sums = window_samples(self.core.config.window_s), {"loss": 0.0, "ce": 0.0, "hgr": 0.0}
        hgr_weight = 0.0 if args.no_hgr else args.hgr_weight
        steps = 0
        for units in tqdm(plan, desc=f"epoch {epoch + 1}/{args.epochs}", disable=not self.is_main, leave=False):
            mine = units[self.rank::self.world]
            if len(units) < 2 * self.world:
                continue
            batch = {k: v.to(self.device) for k, v in collate(self.train_data, mine, n, rng).items()}
            loss, parts = batch_loss(self.model, batch, hgr_weight)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            steps += 1
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] += v
        return {"lr": lr, "steps": steps, **{k: v / max(1, steps) for k, v in sums.items()}}

    def validate(self) -> dict:
        from distill.evaluate import evaluate_teacher
        reports = evaluate_teacher(self.core, self.val_data, self.device) if self.val_data.items else {}
        row = {f"{m}_{k}": r[k] for m, r in reports.items() for k in ("accuracy", "uar", "macro_f1")}
        uars = [r["uar"] for r in reports.values()]
        row["score"] = float(np.mean(uars)) if uars else 0.0
        return row

    def fit(self) -> dict:
        if self.args.resume:
            self.resume()
        for epoch in range(self.start, self.args.epochs):
            t0 = time.time()
            row = {"epoch": epoch + 1, **self.train_epoch(epoch)}
            if self.is_main:
                row.update(self.validate())
                row["seconds"] = round(time.time() - t0, 2)
                self.log(row)
                self.checkpoint(epoch, row)
        return {"best_score": self.best, "history": self.history}

    # --- logs and checkpoints -------------------------------------------------------------

    def log(self, row: dict) -> None:
        self.history.append(row)
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        keys = sorted({k for r in self.history for k in r}, key=lambda k: (k != "epoch", k))
        with open(self.out / "log.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), file=sys.stderr)

    def checkpoint(self, epoch: int, row: dict) -> None:
        meta = {**self.meta, "metrics": {"val": row}}
        write_split(self.out / "split.json", **self.split)
        state = {"epoch": epoch, "optimizer": self.opt.state_dict(), "torch_rng": torch.get_rng_state(),
                 "history": self.history, "best": self.best}
        if row["score"] > self.best:
            self.best = state["best"] = row["score"]
            save_teacher(self.out / "teacher.pt", self.core, meta, epoch=epoch + 1)
            (self.out / "meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
        save_teacher(self.out / "last.pt", self.core, meta, **state)

    def resume(self) -> None:
        path = self.out / "last.pt"
        if not path.is_file():
            raise AvemoError(f"{path}: nothing to resume; run without --resume first")
        ckpt = read_checkpoint(path)
        self.core.load_state_dict(ckpt["state_dict"])
        self.opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        self.start, self.history, self.best = ckpt["epoch"] + 1, ckpt["history"], ckpt["best"]


def train_teacher(argv: Sequence[str]) -> dict:
    """Parse `teacher` arguments, train, return {'best_score', 'history'}."""
    run = Run(parse_args(argv))
    try:
        return run.fit()
    finally:
        if run.world > 1:
            torch.distributed.destroy_process_group()


ABLATION = {"hgr": [], "no-hgr": ["--no-hgr"], "hgr-semi50": ["--hide-labels", "0.5"],
            "no-hgr-semi50": ["--no-hgr", "--hide-labels", "0.5"]}
"""Ablation arms (issue 4 item 6): Soft-HGR on/off x all labels / half the labels hidden."""


def ablation(argv: Sequence[str]) -> dict:
    """`ablation --data D --out O --seeds 3 --folds K [teacher options]`: every arm x seed
    (seed s tests fold s), scored on its held-out speakers; writes O/ablation.{json,md}."""
    p = argparse.ArgumentParser(prog="python -m distill.train ablation")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--folds", type=int, default=4)
    args, rest = p.parse_known_args(argv)
    from distill.evaluate import evaluate
    results: dict[str, list[dict]] = {}
    for arm, flags in ABLATION.items():
        for seed in range(args.seeds):
            out = Path(args.out) / f"{arm}-seed{seed}"
            train_teacher(["--data", args.data, "--out", str(out), "--seed", str(seed), "--folds", str(args.folds),
                           "--fold", str(seed), *flags, *rest])
            result = evaluate(out / "teacher.pt", args.data, split=str(out / "split.json"))
            results.setdefault(arm, []).append(result["reports"])
    Path(args.out, "ablation.json").write_text(json.dumps(results, indent=1) + "\n")
    Path(args.out, "ablation.md").write_text(ablation_table(results))
    return results


def ablation_table(results: dict[str, list[dict]]) -> str:
    """Markdown: mean +- std over seeds of accuracy / UAR / macro-F1 per modality and arm."""
    lines = ["| arm | modality | accuracy | UAR | macro-F1 |", "|---|---|---|---|---|"]
    for arm, runs in results.items():
        for modality in runs[0]:
            cells = [np.array([r[modality][k] for r in runs]) for k in ("accuracy", "uar", "macro_f1")]
            lines.append(f"| {arm} | {modality} | " + " | ".join(f"{c.mean():.3f} ± {c.std():.3f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("teacher", "students", "ablation"):
        print("usage: python -m distill.train {teacher|students|ablation} ...", file=sys.stderr)
        return 2
    if argv[0] == "students":
        from distill.students import students_main
        return students_main(argv[1:])
    try:
        (train_teacher if argv[0] == "teacher" else ablation)(argv[1:])
    except AvemoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
