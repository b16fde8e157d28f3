"""Export helpers shared by every student: torch -> ONNX -> int8 QDQ ONNX -> bundle.

In:  a torch module in eval mode and example inputs; calibration inputs for quantization.
Out: `model.onnx` (float, opset 17), `model.int8.onnx` (static QDQ, int8 weights) and a
     bundle folder (docs/bundle-format.md): payloads + model.npz + manifest.json.

Student-specific code (which student, which calibration data, which target profile) lives
in distill/ship.py (the export stage, `python -m distill.ship export`) and distill/quantize.py;
these helpers stay generic and have no entry point of their own.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from distill.to_npz import onnx_to_npz
from edge.backends.numpy_int8 import NumpyInterpreter
from edge.backends.onnxruntime import OrtSession
from edge.bundle import PAYLOADS, load_bundle, write_manifest
from edge.views import FaceViews, views_of

_LOGGER = logging.getLogger(__name__)
OPSET = 17


def export_onnx(model: torch.nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...], path: str | Path,
                input_name: str | Sequence[str], output_names: Sequence[str] = ("logits", "embedding"),
                dynamic_time_axis: bool = False) -> Path:
    """Export `model` (eval mode, constant folding) to ONNX opset 17; axis 1 of the first input
    dynamic if asked. Several inputs: a tuple of examples and a list of names."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    examples = example if isinstance(example, tuple) else (example,)
    names = [input_name] if isinstance(input_name, str) else list(input_name)
    dynamic = {names[0]: {1: "time"}} if dynamic_time_axis else None
    with torch.no_grad():
        torch.onnx.export(model, examples, str(path), input_names=names, output_names=list(output_names),
                          opset_version=OPSET, do_constant_folding=True, dynamic_axes=dynamic, dynamo=False)
    _LOGGER.info("wrote %s", path)
    return path


def as_feed(input_name: str, x: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One model input as a feed: an array for `input_name`, or already a feed (several inputs,
    e.g. the waveform and the speaker statistics)."""
    items = x.items() if isinstance(x, dict) else ((input_name, x),)
    return {k: np.asarray(v, dtype=np.float32) for k, v in items}


def with_own_stats(windows: list[np.ndarray], input_name: str, stats_name: str) -> list[dict[str, np.ndarray]]:
    """Feeds of an audio model with a speaker-statistics input: each window [1, T] with the
    statistics of its own log-mel (calibration and agreement checks)."""
    from edge.speaker import window_stats
    return [{input_name: w, stats_name: window_stats(w[0])} for w in windows]


class _Calibration(CalibrationDataReader):
    def __init__(self, input_name: str, inputs: Iterable[np.ndarray | dict[str, np.ndarray]]) -> None:
        self._feeds = iter([as_feed(input_name, x) for x in inputs])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def quantize_int8(float_path: str | Path, int8_path: str | Path, calib_inputs: list[np.ndarray], input_name: str,
                  *, per_channel: bool = True, reduce_range: bool = False, symmetric_activations: bool = False,
                  nodes_to_exclude: list[str] | None = None) -> Path:
    """Static int8 QDQ quantization (int8 weights; uint8 activations, or int8 with zero point 0
    when `symmetric_activations`, the TensorRT scheme). Node names are kept, so names from
    `frontend_node_names(float_path, ...)` can be excluded."""
    int8_path = Path(int8_path)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared), skip_optimization=True)
        quantize_static(
            str(prepared), str(int8_path), _Calibration(input_name, calib_inputs),
            quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
            nodes_to_exclude=list(nodes_to_exclude or []),
            extra_options={"ActivationSymmetric": symmetric_activations, "WeightSymmetric": True},
        )
    _LOGGER.info("wrote %s", int8_path)
    return int8_path


def frontend_node_names(onnx_path: str | Path, last_output_name: str | None = None, *,
                        prefix: str | None = None) -> list[str]:
    """Names of the nodes that produce `last_output_name` and everything upstream of it, plus
    every node whose name starts with `prefix` (e.g. "/frontend/" for a `frontend` submodule)."""
    graph = onnx.load(str(onnx_path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    names = {n.name for n in graph.node if prefix and n.name.startswith(prefix)}
    if last_output_name is not None:
        if last_output_name not in producer:
            raise ValueError(f"{onnx_path}: no node produces tensor {last_output_name!r}")
        stack = [last_output_name]
        while stack:
            node = producer.get(stack.pop())
            if node is not None and node.name not in names:
                names.add(node.name)
                stack.extend(node.input)
    if not names:
        raise ValueError(f"{onnx_path}: no front-end nodes found (tensor {last_output_name!r}, prefix {prefix!r})")
    return [n.name for n in graph.node if n.name in names]


def write_bundle(folder: str | Path, *, name: str, modality: str, labels: Sequence[str], input_spec: dict,
                 embedding_dim: int, float_onnx: str | Path, int8_onnx: str | Path, quantization: dict,
                 metrics: dict, agreement: dict | None, provenance: dict, version: str = "1.0.0") -> Path:
    """Copy the payloads into `folder`, convert int8 ONNX to model.npz, write manifest.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for src, kind in ((float_onnx, "onnx"), (int8_onnx, "int8.onnx")):
        dst = folder / PAYLOADS[kind]
        if Path(src).resolve() != dst.resolve():
            shutil.copyfile(src, dst)
    onnx_to_npz(folder / PAYLOADS["int8.onnx"], folder / PAYLOADS["npz"])
    manifest = {
        "format": "avemo-bundle/1", "name": name, "version": version, "modality": modality,
        "labels": list(labels), "input": input_spec, "outputs": {"logits": "logits", "embedding": "embedding"},
        "embedding_dim": embedding_dim, "quantization": quantization, "metrics": metrics,
        "agreement": agreement or {}, "provenance": provenance,
    }
    write_manifest(folder, manifest)
    load_bundle(folder)  # the bundle written must load
    _LOGGER.info("wrote bundle %s", folder)
    return folder


def agreement(bundle_path: str | Path, inputs: list[np.ndarray], labels: np.ndarray | None) -> dict:
    """Argmax agreement of float ORT, int8 ORT and the numpy interpreter over `inputs`,
    and float/int8 accuracy when `labels` (class indices) are given. A face bundle with
    test-time views also gets `int8_vs_float_argmax_as_runtime`: float vs int8 on the answer the
    runtime gives (the mean softmax over the views, edge/views.py)."""
    bundle = load_bundle(bundle_path)
    feeds = [as_feed(bundle.input_name, x) for x in inputs]
    float_ort = OrtSession(bundle.payload("onnx"), bundle.outputs)
    int8_ort = OrtSession(bundle.payload("int8.onnx"), bundle.outputs)
    interp = NumpyInterpreter(bundle.payload("npz"))
    logits_name = bundle.outputs["logits"]
    logits_f = [float_ort.run(f)["logits"].reshape(-1) for f in feeds]
    logits_q = [int8_ort.run(f)["logits"].reshape(-1) for f in feeds]
    pred_f, pred_q = np.argmax(logits_f, axis=1), np.argmax(logits_q, axis=1)
    pred_n = np.array([np.argmax(interp.run(f)[logits_name]) for f in feeds])
    result = {"int8_vs_float_argmax": float(np.mean(pred_q == pred_f)),
              "numpy_vs_onnxruntime_argmax": float(np.mean(pred_n == pred_q)),
              "float_accuracy": None, "int8_accuracy": None, "accuracy_delta": None, "n": len(feeds)}
    views = views_of(bundle)
    if views is not None:
        result["int8_vs_float_argmax_as_runtime"] = float(np.mean(
            _runtime_answers(float_ort, feeds, views) == _runtime_answers(int8_ort, feeds, views)))
    if labels is not None:
        labels = np.asarray(labels)
        acc_f, acc_q = float(np.mean(pred_f == labels)), float(np.mean(pred_q == labels))
        result.update(float_accuracy=acc_f, int8_accuracy=acc_q, accuracy_delta=acc_q - acc_f)
    return result


def _runtime_answers(session: OrtSession, feeds: list[dict[str, np.ndarray]], views: FaceViews) -> np.ndarray:
    """Argmax of each crop's mean softmax over its test-time `views`, as edge.pipeline.Model answers."""
    answers = []
    for feed in feeds:
        (name, x), = feed.items()
        logits = np.stack([session.run({name: v})["logits"].reshape(-1) for v in views(x)])
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        answers.append(np.argmax((probs / probs.sum(axis=1, keepdims=True)).mean(axis=0)))
    return np.asarray(answers)
