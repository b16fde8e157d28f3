"""Classification metrics for `avemo-edge eval` and `python -m distill.evaluate`.

In: true and predicted label strings. Out: a JSON-ready dict
`{"n", "accuracy", "uar", "macro_f1", "per_class", "confusion", "labels"}` where
`confusion[i][j]` counts true `labels[i]` predicted as `labels[j]`, `per_class` maps each
label to its recall, precision, F1 and support. UAR is the mean recall over the classes
that occur in the truth (a class with no true sample has no recall to average).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({y for y in (*y_true, *y_pred) if y not in index})
    if unknown:
        raise ValueError(f"labels {unknown} are not in the label list {list(labels)}")
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        cm[index[t], index[p]] += 1
    return cm


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


def classification_report(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy, UAR, macro-F1, per-class recall/precision/F1 and the confusion matrix."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    cm = confusion_matrix(y_true, y_pred, labels)
    support, predicted, hits = cm.sum(1), cm.sum(0), np.diag(cm)
    recall, precision = _ratio(hits, support), _ratio(hits, predicted)
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = support > 0
    n = int(cm.sum())
    return {
        "n": n,
        "accuracy": float(hits.sum() / n) if n else 0.0,
        "uar": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            label: {"recall": float(recall[i]), "precision": float(precision[i]),
                    "f1": float(f1[i]), "support": int(support[i])}
            for i, label in enumerate(labels)
        },
        "confusion": cm.tolist(),
        "labels": list(labels),
    }


def truncated(x: float, digits: int) -> str:
    """`x` with `digits` decimals, cut rather than rounded (a figure is never shown higher
    than measured; the epsilon keeps 0.7 from printing as 0.6999)."""
    scale = 10 ** digits
    return f"{math.floor(x * scale + 1e-9) / scale:.{digits}f}"


def format_report(report: dict) -> str:
    """A plain-text summary: headline figures, per-class recall and the confusion matrix."""
    labels = report["labels"]
    width = max(8, *(len(label) for label in labels))
    lines = [f"n={report['n']}  accuracy={truncated(report['accuracy'], 4)}  UAR={truncated(report['uar'], 4)}  "
             f"macro-F1={truncated(report['macro_f1'], 4)}",
             "recall: " + "  ".join(f"{k}={truncated(v['recall'], 3)}" for k, v in report["per_class"].items()
                                    if v["support"]),
             "confusion (rows: true, columns: predicted):",
             " " * width + "".join(f"{label[:7]:>8}" for label in labels)]
    for label, row in zip(labels, report["confusion"]):
        lines.append(f"{label:<{width}}" + "".join(f"{c:>8d}" for c in row))
    return "\n".join(lines)


def plot_confusion(report: dict, path: str | Path, title: str = "") -> Path:
    """Confusion matrix (row-normalized) as a PNG. Needs matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        from edge.errors import AvemoError
        raise AvemoError("--plot needs matplotlib: pip install matplotlib") from exc
    cm = np.asarray(report["confusion"], dtype=np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    labels = report["labels"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(labels), 0.8 + 0.7 * len(labels)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"UAR {report['uar']:.3f}  acc {report['accuracy']:.3f}  n={report['n']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
