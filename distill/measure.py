"""A bundle's manifest metrics, measured the way `avemo-edge eval` does.

In:  a bundle folder (docs/bundle-format.md) and the data root its split comes from
     (distill/corpora.py).
Out: `held_out_metrics` -> the manifest's `metrics`: the test split (and EmoDB for audio)
     scored on each ONNX payload by edge.evaluate's own code with onnxruntime;
     `crossval_metrics` -> an all-speaker model's metrics, its recipe's cross-validation;
     `payload_report` one payload on any rows; `set_metrics` writes them into the manifest.
Entry point: `remeasure(folder, root)`, which re-measures a bundle on its own payloads
(distill/quantize.py does after re-quantizing).
"""
from __future__ import annotations

import json
from pathlib import Path

from distill.corpora import SHARED_LABELS, SHARED_SPLIT, crowd_majority_rows, has_shared_corpus, split_rows


def crossval_metrics(crossval: Path | None) -> dict:
    """The manifest metrics of an all-speaker model: its recipe's runtime-scored cross-validation
    (distill/crossval.py --score), mean over folds as the headline figures."""
    if crossval is None:
        return {"split": "none held out: trained on all speakers (run python -m distill.crossval ... --score "
                         "and export with --crossval DIR for the recipe's figures)"}
    summary = json.loads((crossval / "summary-runtime.json").read_text())
    return {"split": SHARED_SPLIT["audio"], "uar": summary["ravdess_uar"]["mean"],
            "accuracy": summary["ravdess_accuracy"]["mean"], "macro_f1": summary["ravdess_macro_f1"]["mean"],
            "crossval": summary, "crossval_dir": str(crossval)}


def held_out_metrics(folder: Path, modality: str, root: Path, labels: list[str], validation: dict | None) -> dict:
    """Test-split figures of each ONNX payload the bundle has (int8, and float or fp16), and
    EmoDB for audio, scored by `avemo-edge eval`'s own code (edge.evaluate) with onnxruntime;
    `validation` is the torch model's validation report."""
    from edge.bundle import load_bundle
    from edge.evaluate import read_labels_csv
    bundle = load_bundle(folder)
    parts = {"test": split_rows(modality, root, "test")}
    if modality == "audio" and (root / "emodb_2s").is_dir():
        parts["emodb"] = read_labels_csv(root / "emodb_2s", "audio")
    majority = crowd_majority_rows(root, "test") if modality == "face" else None
    if majority:
        parts["test_ferplus_majority"] = majority       # the second truth (FER+ crowd votes)
    out = {"split": SHARED_SPLIT[modality] if has_shared_corpus(modality, root)
           else f"{root.name}: test speakers of fold 0 of 5 (never seen)"}
    fp16 = bundle.manifest.get("quantization", {}).get("scheme") == "fp16"
    kinds = [(k, t) for k, t in (("int8.onnx", "int8"), ("onnx", "fp16" if fp16 else "float"))
             if bundle.has_payload(k)]
    for kind, tag in kinds:
        for part, rows in parts.items():
            out[f"{part}_{tag}"] = payload_report(folder, kind, rows)
    headline = out[f"test_{kinds[0][1]}"]
    out.update(accuracy=headline["accuracy"], uar=headline["uar"], macro_f1=headline["macro_f1"],
               validation_torch=validation)
    return out


def payload_report(folder: Path, kind: str, rows: list, adapt: bool = True) -> dict:
    """`avemo-edge eval`'s report (without its item list) for the bundle's `kind` payload run
    by onnxruntime: the same replay, gate and pooling (audio) or crop and mirror (face), and
    the same causal per-speaker order for a model that adapts to the speaker (`adapt`)."""
    from edge.backends.onnxruntime import OrtSession
    from edge.bundle import load_bundle
    from edge.evaluate import evaluate_rows, scorer
    from edge.profiles import load_profile
    bundle = load_bundle(folder)
    score_item = scorer(folder, bundle.modality, load_profile("x86"), "onnxruntime", adapt=adapt)
    score_item.model.session = OrtSession(bundle.payload(kind), bundle.outputs)
    report = evaluate_rows(score_item, bundle.labels, rows)
    report.pop("items")
    return report


def remeasure(folder: Path, root: Path) -> bool:
    """Replace the metrics a re-quantized bundle copied from its source by figures measured on
    its own payloads (the shared corpora's test split); False where those corpora are absent or
    the metrics are a cross-validation of the recipe (an all-speaker model has no test split)."""
    from edge.bundle import load_bundle
    bundle = load_bundle(folder)
    if not has_shared_corpus(bundle.modality, root) or list(bundle.labels) != SHARED_LABELS[bundle.modality] \
            or "crossval" in bundle.manifest.get("metrics", {}):
        return False
    validation = bundle.manifest.get("metrics", {}).get("validation_torch")
    set_metrics(folder, held_out_metrics(folder, bundle.modality, root, list(bundle.labels), validation))
    return True


def set_metrics(folder: Path, metrics: dict) -> None:
    """Replace the manifest's `metrics` (its file list rewritten)."""
    from edge.bundle import MANIFEST, write_manifest
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["metrics"] = metrics
    write_manifest(folder, {k: v for k, v in manifest.items() if k != "files"})
