"""distill/to_npz.py: ONNX -> model.npz keeps every node and initializer and folds Constants."""
from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from distill.to_npz import main, onnx_to_npz  # noqa: E402
from edge.backends.numpy_int8 import NumpyInterpreter  # noqa: E402
from edge.backends.onnxruntime import OrtSession  # noqa: E402


def _read(npz_path):
    with np.load(npz_path, allow_pickle=False) as z:
        return json.loads(z["__graph__"].tobytes()), {k[5:]: z[k] for k in z.files if k.startswith("init/")}


def _small_model(shuffle: bool = False) -> onnx.ModelProto:
    """x [1, 6] -> +bias (Constant) -> *w (initializer) -> Reshape (Constant shape) -> Relu -> y [1, 2, 3];
    also a scalar Constant (value_float) and an int8 initializer."""
    nodes = [
        helper.make_node("Constant", [], ["bias"], value=numpy_helper.from_array(np.arange(6, dtype=np.float32))),
        helper.make_node("Constant", [], ["half"], value_float=0.5),
        helper.make_node("Constant", [], ["shape"], value_ints=[1, 2, 3]),
        helper.make_node("Add", ["x", "bias"], ["a"], name="add"),
        helper.make_node("Mul", ["a", "w"], ["m"], name="mul"),
        helper.make_node("Mul", ["m", "half"], ["h"], name="scale"),
        helper.make_node("Reshape", ["h", "shape"], ["r"], name="reshape", allowzero=0),
        helper.make_node("Relu", ["r"], ["y"], name="relu"),
        helper.make_node("DequantizeLinear", ["q", "qs"], ["dq"], name="dq"),
    ]
    if shuffle:
        nodes = nodes[::-1]
    inits = [numpy_helper.from_array(np.linspace(-1, 1, 6).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([-3, 7], np.int8), "q"),
             numpy_helper.from_array(np.array(0.25, np.float32), "qs")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3]),
                               helper.make_tensor_value_info("dq", TensorProto.FLOAT, [2])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_round_trip_keeps_nodes_and_initializers(tmp_path):
    model = _small_model()
    onnx.save(model, tmp_path / "m.onnx")
    onnx_to_npz(tmp_path / "m.onnx", tmp_path / "m.npz")
    graph, inits = _read(tmp_path / "m.npz")
    assert graph["inputs"] == [{"name": "x", "shape": [1, 6]}] and graph["outputs"] == ["y", "dq"]
    expected = [n for n in model.graph.node if n.op_type != "Constant"]
    assert [n["op"] for n in graph["nodes"]] == [n.op_type for n in expected]
    for ours, theirs in zip(graph["nodes"], expected):
        assert (ours["name"], ours["inputs"], ours["outputs"]) == (theirs.name, list(theirs.input), list(theirs.output))
    assert graph["nodes"][3]["attrs"] == {"allowzero": 0}
    for t in model.graph.initializer:
        ref = numpy_helper.to_array(t)
        assert inits[t.name].dtype == ref.dtype and inits[t.name].shape == ref.shape
        np.testing.assert_array_equal(inits[t.name], ref)
    np.testing.assert_array_equal(inits["bias"], np.arange(6, dtype=np.float32))  # folded Constants
    assert inits["half"].dtype == np.float32 and inits["half"].shape == () and inits["half"] == 0.5
    assert inits["shape"].dtype == np.int64 and list(inits["shape"]) == [1, 2, 3]


def test_converted_model_runs_like_onnxruntime(tmp_path):
    onnx.save(_small_model(), tmp_path / "m.onnx")
    main([str(tmp_path / "m.onnx"), str(tmp_path / "m.npz")])  # the CLI entry point
    x = np.linspace(-5, 5, 6, dtype=np.float32).reshape(1, 6)
    ours = NumpyInterpreter(tmp_path / "m.npz").run({"x": x})
    ref = OrtSession(tmp_path / "m.onnx", {"y": "y", "dq": "dq"}).run({"x": x})
    np.testing.assert_allclose(ours["y"], ref["y"], rtol=1e-6)
    np.testing.assert_array_equal(ours["dq"], [-0.75, 1.75])


def test_nodes_are_sorted_topologically(tmp_path):
    model = _small_model(shuffle=True)
    onnx.save(model, tmp_path / "m.onnx")
    onnx_to_npz(tmp_path / "m.onnx", tmp_path / "m.npz")
    graph, _ = _read(tmp_path / "m.npz")
    seen = {"x", "w", "q", "qs", "bias", "half", "shape"}
    for node in graph["nodes"]:
        assert set(node["inputs"]) <= seen, node
        seen.update(node["outputs"])
    assert len(graph["nodes"]) == 6


def test_cycle_is_reported(tmp_path):
    model = _small_model()
    model.graph.node.append(helper.make_node("Relu", ["loop"], ["loop"], name="selfloop"))
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="cycle or undefined inputs at nodes: selfloop"):
        onnx_to_npz(tmp_path / "m.onnx", tmp_path / "m.npz")
