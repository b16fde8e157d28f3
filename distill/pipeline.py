"""`make distill`: cross-validation -> face teacher -> students -> export -> quantize, in one command.

    python -m distill.pipeline --out runs/default                       # built-in synthetic corpus
    python -m distill.pipeline --out runs/real --data ../shared/data    # the shared corpora

With no --data, a procedural audio-visual corpus (distill/data/synthetic.py) is written
under OUT/synthetic and used for every stage, so the chain runs on a fresh machine in a few
minutes. With --data pointing at the shared corpora folder (RAVDESS speech, EmoDB, FER2013
with its FER+ votes):
1. the audio recipe is cross-validated over actors (distill/crossval.py, scored through
   edge's eval: the figures the audio manifest carries);
2. the face teacher trains (students.FACE_TEACHER_ARGS: the face net at width 1.5, FER+ votes,
   Soft-HGR against the label embedding) -> OUT/face-teacher;
3. the students train (distill/students.py) with the fixed splits of distill/corpora.py: the
   audio student from labels on all 20 actors (+ EmoDB), the face student distilled from the
   face teacher (students.FACE_STUDENT_ARGS: KD + regression onto its common-space embedding,
   FER+ votes, 120 epochs) -> OUT/students, then fine-tuned with quantization-aware training
   (students.FACE_QAT_ARGS) -> OUT/face-qat;
4. export (distill/ship.py: the audio student and the fine-tuned face student) and
   quantization (distill/quantize.py) for --target -> OUT/models/{audio,face},
   OUT/quantized-<target>/.
The audio-visual teacher (`python -m distill.train teacher`, docs/teacher.md) is not a stage:
on the real corpora its branches were weaker than the students (audio branch UAR 0.293 on
unseen actors), so its soft targets pulled them down. Every stage resumes when the command is
run again (finished stages are kept). `--device cuda` trains the face teacher and the
students on a GPU. The shipped models in edge/models are never overwritten by this command:
copy a bundle there on purpose.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from distill import crossval, quantize, ship, students
from distill.corpora import has_shared_corpus

_LOGGER = logging.getLogger(__name__)


def corpus_root(data: Path | None, out: Path) -> Path:
    """The corpora folder: --data, else the synthetic corpus written under OUT/synthetic."""
    if data is not None:
        return data
    from distill.data.synthetic import make_synthetic_corpus
    folder = out / "synthetic"
    if not (folder / "labels.csv").is_file():
        make_synthetic_corpus(folder)
    return folder


def student_stage(out: Path, modality: str, argv: list[str]) -> Path:
    """Train `modality` into `out` unless it finished there (a stopped run resumes from its .ckpt)."""
    if not (out / f"{modality}.json").is_file():
        students.students_main(["--out", str(out), "--modality", modality, *argv])
    return out / f"{modality}.pt"


def run(out: Path, data: Path | None, epochs: int | None, target: str, threads: int, device: str = "cpu") -> Path:
    root = corpus_root(data, out)
    epoch_args = ["--epochs", str(epochs)] if epochs else []
    corpus_args = ["--with-emodb"] if students.AUDIO_WITH_EMODB and (root / "emodb_2s").is_dir() else []
    crossval_dir = None
    if has_shared_corpus("audio", root):
        crossval_dir = out / "crossval"
        crossval.main(["--data", str(root), "--out", str(crossval_dir), "--score", "--target", target,
                       *corpus_args, *epoch_args])
    base = ["--data", str(root), "--threads", str(threads), "--device", device]
    face_teacher = student_stage(out / "face-teacher", "face", [*base, *students.FACE_TEACHER_ARGS, *epoch_args])
    student_stage(out / "students", "audio", [*base, "--no-kd", *corpus_args, *epoch_args])
    teacher_args = [*base, "--teacher", str(face_teacher)]
    face = student_stage(out / "students", "face", [*teacher_args, *students.FACE_STUDENT_ARGS, *epoch_args])
    student_stage(out / "face-qat", "face", [*teacher_args, "--init", str(face), *students.FACE_QAT_ARGS, *epoch_args])
    ship.export_modality("audio", out / "students", root, out / "models", target, crossval_dir)
    ship.export_modality("face", out / "face-qat", root, out / "models", target)
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
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the face teacher and students train")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    models = run(Path(args.out), args.data, args.epochs, args.target, args.threads, args.device)
    _LOGGER.info("distill: bundles in %s (copy to edge/models to ship them)", models)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
