"""`make distill`: teacher -> students -> export -> quantize, in one command.

    python -m distill.pipeline --out runs/default                       # built-in synthetic corpus
    python -m distill.pipeline --out runs/real --data ../shared/data    # the shared corpora

With no --data, a procedural audio-visual corpus (distill/data/synthetic.py) is written
under OUT/synthetic and used for every stage, so the chain runs on a fresh machine in a few
minutes. With --data pointing at the shared corpora folder, the teacher's audio branch
trains on RAVDESS speech and its visual branch on FER2013 (label-matched cross-corpus pairs
feed the audio-visual HGR term), the audio recipe is cross-validated over actors
(distill/crossval.py, scored through edge's eval: the figures the audio manifest carries), and
the students train on the same corpora with the fixed splits of distill/ship.py (the audio
student on all 20 actors). Every stage resumes when the command is run again. Outputs: OUT/teacher (checkpoint, logs), OUT/crossval (folds, summaries), OUT/students
(<modality>.pt/.json), OUT/models/{audio,face} (bundles, the --target's quantization) and
OUT/quantized-<target>/ (what `make quantize` writes). The shipped models in edge/models are
never overwritten by this command: copy a bundle there on purpose.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from distill import crossval, quantize, ship, train

_LOGGER = logging.getLogger(__name__)


def corpora(data: Path | None, out: Path) -> tuple[Path, list[str]]:
    """(root for the students, --data folders for the teacher)."""
    if data is None:
        from distill.data.synthetic import make_synthetic_corpus
        folder = out / "synthetic"
        if not (folder / "labels.csv").is_file():
            make_synthetic_corpus(folder)
        return folder, [str(folder)]
    teacher_data = [str(p) for p in (data / "ravdess_speech", data / "fer2013" / "train") if p.is_dir()]
    return data, teacher_data or [str(data)]


def run(out: Path, data: Path | None, epochs: int | None, target: str, threads: int) -> Path:
    root, teacher_data = corpora(data, out)
    teacher_out = out / "teacher"
    teacher_args = ["teacher", "--out", str(teacher_out), "--threads", str(threads),
                    "--cache", str(out / "cache")]
    for folder in teacher_data:
        teacher_args += ["--data", folder]
    if len(teacher_data) > 1:
        teacher_args.append("--pair-cross-corpus")
    if epochs:
        teacher_args += ["--epochs", str(epochs)]
    train.main(teacher_args + (["--resume"] if (teacher_out / "last.pt").is_file() else []))
    epoch_args = ["--epochs", str(epochs)] if epochs else []
    corpus_args = ["--with-emodb"] if ship.AUDIO_WITH_EMODB and (root / "emodb_2s").is_dir() else []
    crossval_dir = None
    if ship.has_shared_corpus("audio", root):
        crossval_dir = out / "crossval"
        crossval.main(["--data", str(root), "--out", str(crossval_dir), "--score", "--target", target,
                       *corpus_args, *epoch_args])
    student_args = ["--data", str(root), "--out", str(out / "students"), "--teacher",
                    str(teacher_out / "teacher.pt"), "--threads", str(threads), *corpus_args]
    for modality in ("audio", "face"):  # a finished student is kept, a stopped one resumes from its .ckpt
        if not (out / "students" / f"{modality}.json").is_file():
            ship.students_main(student_args + ["--modality", modality] + epoch_args)
    ship.export_all(out / "students", root, out / "models", target, crossval_dir)
    quantize.main(["--target", target, "--models", str(out / "models"), "--out", str(out / f"quantized-{target}"),
                   "--data", str(root)])
    return out / "models"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="distill.pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/default")
    p.add_argument("--data", type=Path, default=None, help="corpora folder (default: the built-in synthetic corpus)")
    p.add_argument("--epochs", type=int, default=None, help="epochs for every stage (default: each stage's own)")
    p.add_argument("--target", default="x86", help="firmware profile to quantize for")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    models = run(Path(args.out), args.data, args.epochs, args.target, args.threads)
    _LOGGER.info("distill: bundles in %s (copy to edge/models to ship them)", models)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
