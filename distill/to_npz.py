"""ONNX -> model.npz: the numpy interpreter's payload (docs/bundle-format.md).

In:  an ONNX model (normally the int8 QDQ `model.int8.onnx`; a float model works too).
Out: a plain `.npz` (no pickles): `__graph__` (UTF-8 JSON: inputs, outputs, nodes in
     topological order with ONNX op names and JSON attributes) and `init/<name>` for every
     initializer in its ONNX dtype. Constant nodes are folded into initializers.

CLI: python -m distill.to_npz model.int8.onnx model.npz
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

_LOGGER = logging.getLogger(__name__)


def onnx_to_npz(onnx_path: str | Path, npz_path: str | Path) -> None:
    """Convert `onnx_path` to the numpy interpreter payload `npz_path`."""
    model = onnx.load(str(onnx_path))
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes = []
    for node in _topological(graph):
        if node.op_type == "Constant":
            inits[node.output[0]] = _constant_value(node)
        else:
            nodes.append(_node_json(node))
    spec = {
        "inputs": [_value_json(v) for v in graph.input if v.name not in inits],
        "outputs": [v.name for v in graph.output],
        "nodes": nodes,
    }
    arrays = {f"init/{name}": np.asarray(a, order="C") for name, a in inits.items()}
    arrays["__graph__"] = np.frombuffer(json.dumps(spec).encode("utf-8"), dtype=np.uint8)
    np.savez(str(npz_path), **arrays)
    _LOGGER.info("wrote %s (%d nodes, %d initializers)", npz_path, len(nodes), len(inits))


def _topological(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes ordered so every input is produced before use; a sorted graph keeps its order."""
    ready = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        waiting = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            names = ", ".join(n.name or n.op_type for n in waiting[:5])
            raise ValueError(f"graph has a cycle or undefined inputs at nodes: {names}")
        pending = waiting
    return ordered


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attr = node.attribute[0]
    value = helper.get_attribute_value(attr)
    if attr.name == "value":
        return numpy_helper.to_array(value)
    dtype = {"value_float": np.float32, "value_floats": np.float32,
             "value_int": np.int64, "value_ints": np.int64}.get(attr.name)
    if dtype is None:
        raise ValueError(f"Constant node {node.name!r}: unsupported attribute {attr.name!r}")
    return np.asarray(value, dtype=dtype)


def _node_json(node: onnx.NodeProto) -> dict:
    return {"op": node.op_type, "name": node.name, "inputs": list(node.input),
            "outputs": list(node.output),
            "attrs": {a.name: _attr_json(node, a) for a in node.attribute}}


def _attr_json(node: onnx.NodeProto, attr: onnx.AttributeProto):
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value).tolist()
    if isinstance(value, (int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, bytes)) for v in value):
        return [v.decode("utf-8") if isinstance(v, bytes) else v for v in value]
    raise ValueError(f"node {node.name!r} ({node.op_type}): attribute {attr.name!r} cannot be stored as JSON")


def _value_json(value: onnx.ValueInfoProto) -> dict:
    dims = value.type.tensor_type.shape.dim
    return {"name": value.name, "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in dims]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert an ONNX model to the numpy interpreter's .npz")
    parser.add_argument("onnx_path", type=Path)
    parser.add_argument("npz_path", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    onnx_to_npz(args.onnx_path, args.npz_path)


if __name__ == "__main__":
    main()
