import json

import numpy as np
import pytest

from edge.metrics import classification_report, format_report, plot_confusion


def test_known_answer():
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", "c", "c"]
    r = classification_report(y_true, y_pred, ["a", "b", "c"])
    assert r["n"] == 6 and r["accuracy"] == pytest.approx(4 / 6)
    assert r["uar"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 * 1 / 1.5]
    assert r["macro_f1"] == pytest.approx(np.mean(f1))
    assert r["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert r["per_class"]["b"]["recall"] == 0.5
    json.dumps(r)


def test_classes_without_truth_do_not_count_in_uar():
    r = classification_report(["a", "a"], ["a", "b"], ["a", "b"])
    assert r["uar"] == 0.5


def test_unknown_labels_are_an_error():
    with pytest.raises(ValueError, match="not in the label list"):
        classification_report(["a"], ["z"], ["a"])


def test_format_and_plot(tmp_path):
    r = classification_report(["a", "b"], ["a", "a"], ["a", "b"])
    text = format_report(r)
    assert "UAR=0.5000" in text and "confusion" in text
    two_thirds = classification_report(["a", "a", "a"], ["a", "a", "b"], ["a", "b"])
    assert "accuracy=0.6666" in format_report(two_thirds)   # cut, never rounded up
    png = plot_confusion(r, tmp_path / "cm.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
