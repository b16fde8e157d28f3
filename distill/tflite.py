"""int8 QDQ ONNX -> int8 LiteRT (.tflite) flatbuffer, without TensorFlow.

In:  a bundle's `model.int8.onnx` (onnxruntime.quantization static QDQ: int8 per-channel
     weights, uint8 or symmetric int8 activations; a float front end may precede the first
     QuantizeLinear, as in the audio student).
Out: a `.tflite` written with the flatbuffer schema shipped in ai-edge-litert, runnable by
     `ai_edge_litert.interpreter.Interpreter`. Input and outputs keep their ONNX names,
     shapes and float32 dtype (QUANTIZE / DEQUANTIZE at the boundaries).

How:
- Constant subgraphs are folded with onnx's reference evaluator, `Shape` of a static tensor
  included, so the audio front end's shape arithmetic disappears.
- A graph input with a dynamic dim (the audio `[1, T]`) is traced twice (T = 32000 and
  16000); dims and slice bounds that differ between the traces become -1 reshape dims and
  end-relative slice bounds, so the model accepts any T (a multiple of the hop:
  `resize_tensor_input` then `allocate_tensors`). `fixed_input_shape` pins the input instead.
- QuantizeLinear -> DequantizeLinear pairs become int8 tensors (uint8 zero points - 128,
  same scale); DequantizeLinear of an initializer becomes a constant weight (per-channel
  axis 0 for CONV_2D [O, H, W, I] and FULLY_CONNECTED [O, I], axis 3 for
  DEPTHWISE_CONV_2D [1, H, W, C]); biases int32 with scale input_scale * weight_scale.
- Layouts: every tensor records `perm` (TFLite tensor = ONNX tensor transposed by perm).
  Convolutions work channels-last; TRANSPOSE (or a free RESHAPE when only unit dims move)
  is inserted only where an op needs another order; ONNX Transpose costs nothing.
- Ops: Conv (1-D/2-D, regular/depthwise), Gemm, MaxPool, GlobalAveragePool, ReduceMean, ReduceMax,
  Add, Relu, Clip (ReLU/ReLU6), Resize (nearest, integer upscale: the detector's feature
  pyramid) in int8; Conv and MaxPool (the float stem), Relu/Clip, Mul/Add/Sub/Div, MatMul, Log,
  Sqrt, Sigmoid (LOGISTIC, also between int8 tensors: dequantized around it), Resize,
  ReduceMean, ReduceMax, Slice, Concat, Reshape/Flatten/(Un)Squeeze/Transpose in float.
  A float model (no QDQ, the detector's model.onnx) converts to a float .tflite. Anything else
  raises NotImplementedError naming the node.

CLI: python -m distill.tflite model.int8.onnx model.tflite [--fixed-shape 1,32000]
(the detector bundle's payload: python -m distill.detector, which calls onnx_to_tflite)
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

PROBE_SIZES = (32000, 16000)
"""Sizes a dynamic input dim is traced at (2 s and 1 s of 16 kHz audio: multiples of any hop)."""
_RESHAPES = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")


def onnx_to_tflite(int8_onnx_path: str | Path, tflite_path: str | Path,
                   fixed_input_shape: Sequence[int] | None = None) -> Path:
    """Convert `int8_onnx_path` to `tflite_path`; a dynamic input dim stays dynamic unless
    `fixed_input_shape` pins it. Returns `tflite_path`."""
    model = onnx.load(str(int8_onnx_path))
    if len(model.graph.input) != 1:
        raise NotImplementedError(f"{int8_onnx_path}: one graph input expected, got {len(model.graph.input)}")
    dims = [d.dim_value or None for d in model.graph.input[0].type.tensor_type.shape.dim]
    if fixed_input_shape is not None:
        if len(fixed_input_shape) != len(dims) or any(d not in (None, f) for d, f in zip(dims, fixed_input_shape)):
            raise ValueError(f"fixed_input_shape {list(fixed_input_shape)} does not fit the input {dims}")
        dims = list(fixed_input_shape)
    traced = _trace(model, [d or PROBE_SIZES[0] for d in dims])
    probe = _trace(model, [d or PROBE_SIZES[1] for d in dims]) if None in dims else traced
    data = _Converter(traced, probe).convert()
    Path(tflite_path).write_bytes(data)
    return Path(tflite_path)


def litert_agreement(bundle_dir: str | Path, inputs: Sequence[np.ndarray]) -> float:
    """Argmax agreement of the bundle's model.tflite (LiteRT, as the runtime opens it) with its
    model.int8.onnx (onnxruntime) over `inputs`; the manifest need not list model.tflite yet."""
    from edge.backends.litert import LiteRTSession
    from edge.backends.onnxruntime import OrtSession
    from edge.bundle import PAYLOADS, load_bundle
    bundle = load_bundle(bundle_dir)
    lite = LiteRTSession(bundle.path / PAYLOADS["tflite"], bundle.input_name, bundle.outputs)
    ort = OrtSession(bundle.payload("int8.onnx"), bundle.outputs)
    feeds = [{bundle.input_name: np.asarray(x, np.float32)} for x in inputs]
    same = [np.argmax(lite.run(f)["logits"]) == np.argmax(ort.run(f)["logits"]) for f in feeds]
    return float(np.mean(same)) if same else float("nan")


# ---------------------------------------------------------------- tracing and constant folding

@dataclass
class _Trace:
    nodes: list
    consts: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    input: str
    input_shape: tuple[int, ...]
    outputs: list[str]


def _trace(model: onnx.ModelProto, input_shape: list[int]) -> _Trace:
    """Fix the input shape, fold every constant subgraph, infer every static shape."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    graph = m.graph
    for dim, size in zip(graph.input[0].type.tensor_type.shape.dim, input_shape):
        dim.Clear()
        dim.dim_value = size
    del graph.value_info[:]
    shapes = _shapes(shape_inference.infer_shapes(m, data_prop=True).graph)
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes = []
    for node in graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type == "Shape" and _static(shapes.get(node.input[0])):
            attrs = {a.name: a.i for a in node.attribute}
            shape = shapes[node.input[0]]
            consts[node.output[0]] = np.array(shape[attrs.get("start", 0):attrs.get("end", len(shape))], np.int64)
        elif node.op_type not in ("QuantizeLinear", "DequantizeLinear") and all(i in consts for i in inputs):
            outs = ReferenceEvaluator(node).run(None, {i: consts[i] for i in inputs})
            consts.update((name, np.asarray(v)) for name, v in zip(node.output, outs))
        else:
            nodes.append(node)
    used = {i for n in nodes for i in n.input if i in consts}
    folded = onnx.helper.make_graph(nodes, graph.name, list(graph.input), list(graph.output),
                                    [numpy_helper.from_array(consts[n], n) for n in sorted(used)])
    shapes = _shapes(shape_inference.infer_shapes(onnx.helper.make_model(folded, opset_imports=m.opset_import),
                                                  strict_mode=True).graph)
    for node in nodes:
        for out in node.output:
            if not _static(shapes.get(out)):
                raise NotImplementedError(f"node {node.name or node.op_type}: output {out!r} has no static shape "
                                          f"({shapes.get(out)}) for input shape {input_shape}")
    return _Trace(nodes, consts, shapes, graph.input[0].name, tuple(input_shape), [o.name for o in graph.output])


def _shapes(graph: onnx.GraphProto) -> dict[str, tuple]:
    out = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    return out


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


# ---------------------------------------------------------------- tensors

@dataclass(frozen=True)
class _T:
    """A TFLite tensor standing for one ONNX value."""

    index: int
    shape: tuple[int, ...]      # TFLite shape at the traced input size
    probe: tuple[int, ...]      # TFLite shape at the probe input size (== shape when static)
    perm: tuple[int, ...]       # TFLite tensor = ONNX tensor transposed by perm
    quant: tuple[float, int] | None  # int8 (scale, zero point); None: float32

    @property
    def dynamic(self) -> tuple[bool, ...]:
        return tuple(a != b for a, b in zip(self.shape, self.probe))

    def onnx_shape(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(traced, probe) shapes in ONNX order."""
        shape, probe = [0] * len(self.perm), [0] * len(self.perm)
        for i, p in enumerate(self.perm):
            shape[p], probe[p] = self.shape[i], self.probe[i]
        return tuple(shape), tuple(probe)


def _channels_last(rank: int) -> tuple[int, ...]:
    return (0, *range(2, rank), 1)


def _identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


# ---------------------------------------------------------------- the converter

class _Converter:
    def __init__(self, trace: _Trace, probe: _Trace) -> None:
        from ai_edge_litert import schema_py_generated as tfl
        self.tfl, self.tr, self.pr = tfl, trace, probe
        if [n.name for n in trace.nodes] != [n.name for n in probe.nodes]:
            raise NotImplementedError("the graph folds differently at two input sizes: fix the input shape")
        self.tensors: list = []
        self.buffers: list = [tfl.BufferT()]
        self.ops: list = []
        self.codes: dict[tuple[int, int], int] = {}
        self.env: dict[str, _T] = {}
        self.weights: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int]] = {}
        self.cache: dict[tuple, _T] = {}
        self.consumers: dict[str, list] = defaultdict(list)
        for node in trace.nodes:
            for i in node.input:
                self.consumers[i].append(node)

    # ---- flatbuffer plumbing

    def tensor(self, name: str, shape: Sequence[int], dtype: str, quant=None, data: np.ndarray | None = None,
               signature: Sequence[int] | None = None) -> int:
        tfl = self.tfl
        t = tfl.TensorT()
        t.name, t.shape = name, [int(d) for d in shape]
        t.type = {"float32": tfl.TensorType.FLOAT32, "int8": tfl.TensorType.INT8,
                  "int32": tfl.TensorType.INT32}[dtype]
        if signature is not None and list(signature) != t.shape:
            t.shapeSignature = [int(d) for d in signature]
        t.buffer = 0
        if data is not None:
            buf = tfl.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data, dtype).tobytes(), np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        if quant is not None:
            scales, zeros, axis = quant
            q = tfl.QuantizationParametersT()
            q.scale = [float(s) for s in np.atleast_1d(scales)]
            q.zeroPoint = [int(z) for z in np.atleast_1d(zeros)]
            q.quantizedDimension = axis
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, name: str, data: np.ndarray, dtype: str, quant=None) -> int:
        return self.tensor(name, np.shape(data), dtype, quant, np.asarray(data))

    def op(self, builtin: str, inputs: list[int], outputs: list[int], options=None, version: int = 1) -> None:
        tfl = self.tfl
        code = getattr(tfl.BuiltinOperator, builtin)
        key = (code, version)
        self.codes.setdefault(key, len(self.codes))
        o = tfl.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self.codes[key], inputs, outputs
        if options is not None:
            o.builtinOptionsType = getattr(tfl.BuiltinOptions, type(options).__name__[:-1])
            o.builtinOptions = options
        self.ops.append(o)

    def options(self, kind: str, **fields):
        opts = getattr(self.tfl, kind + "T")()
        for k, v in fields.items():
            setattr(opts, k, v)
        return opts

    def new(self, name: str, shape, probe, perm, quant) -> _T:
        sig = [-1 if a != b else a for a, b in zip(shape, probe)]
        index = self.tensor(name, shape, "float32" if quant is None else "int8",
                            None if quant is None else (quant[0], quant[1], 0), signature=sig)
        return _T(index, tuple(shape), tuple(probe), tuple(perm), quant)

    def value(self, name: str, perm: Sequence[int], quant) -> _T:
        """A new tensor for ONNX value `name` in layout `perm`, registered in env."""
        shape, probe = self.tr.shapes[name], self.pr.shapes[name]
        t = self.new(name, [shape[p] for p in perm], [probe[p] for p in perm], perm, quant)
        self.env[name] = t
        return t

    # ---- values: quantize, dequantize, relayout

    def q_params(self, scale: str, zero: str) -> tuple[float, int]:
        s, z = self.tr.consts[scale], self.tr.consts[zero] if zero else np.zeros((), np.uint8)
        if s.size != 1:
            raise NotImplementedError(f"per-channel activation quantization ({scale}) is not supported")
        return float(np.float32(s.reshape(()))), int(z.reshape(())) - (128 if z.dtype == np.uint8 else 0)

    def float_(self, t: _T) -> _T:
        if t.quant is None:
            return t
        key = ("f", t.index, t.perm)
        if key not in self.cache:
            out = self.new(self.tensors[t.index].name + "/float", t.shape, t.probe, t.perm, None)
            self.op("DEQUANTIZE", [t.index], [out.index], version=2)
            self.cache[key] = out
        return self.cache[key]

    def int8(self, t: _T, quant: tuple[float, int], name: str) -> _T:
        if t.quant == quant:
            return t
        key = ("q", t.index, t.perm, quant)
        if key not in self.cache:
            out = self.new(name, t.shape, t.probe, t.perm, quant)
            self.op("QUANTIZE", [t.index], [out.index], version=2)
            self.cache[key] = out
        return self.cache[key]

    def relayout(self, t: _T, perm: Sequence[int]) -> _T:
        perm = tuple(perm)
        if t.perm == perm:
            return t
        key = ("l", t.index, t.perm, perm)
        if key not in self.cache:
            shape, probe = t.onnx_shape()
            name = f"{self.tensors[t.index].name}/{''.join(map(str, perm))}"
            out = self.new(name, [shape[p] for p in perm], [probe[p] for p in perm], perm, t.quant)
            if [p for p in t.perm if shape[p] != 1] == [p for p in perm if shape[p] != 1]:
                self.reshape_op(t, out)
            else:
                inverse = {p: i for i, p in enumerate(t.perm)}
                axes = self.const(name + "/perm", np.array([inverse[p] for p in perm], np.int32), "int32")
                self.op("TRANSPOSE", [t.index, axes], [out.index], version=2 if t.quant else 1)
            self.cache[key] = out
        return self.cache[key]

    def ordered(self, t: _T, any_shape: bool = False) -> _T:
        """`t` in ONNX layout; with `any_shape` (for a reshape) `t` itself when its elements
        are already in ONNX order (only unit dims moved)."""
        shape, _ = t.onnx_shape()
        if any_shape and [p for p in t.perm if shape[p] != 1] == sorted(p for p in t.perm if shape[p] != 1):
            return t
        return self.relayout(t, _identity(len(t.perm)))

    def reshape_op(self, src: _T, out: _T) -> None:
        if sum(out.dynamic) > 1:
            raise NotImplementedError(f"reshape to {out.shape} with {sum(out.dynamic)} size-dependent dims")
        target = np.array([-1 if d else s for s, d in zip(out.shape, out.dynamic)], np.int32)
        shape = self.const(self.tensors[out.index].name + "/shape", target, "int32")
        self.op("RESHAPE", [src.index, shape], [out.index])

    def out_quant(self, name: str) -> tuple[float, int] | None:
        """int8 params an op producing `name` should write: those of the QuantizeLinear that
        consumes it (through reshapes), None when it is consumed as float."""
        users = self.consumers.get(name, [])
        if name in self.tr.outputs or not users:
            return None
        if all(u.op_type == "QuantizeLinear" for u in users):
            params = {self.q_params(*u.input[1:3]) for u in users}
            return params.pop() if len(params) == 1 else None
        if len(users) == 1 and users[0].op_type in _RESHAPES:
            return self.out_quant(users[0].output[0])
        return None

    def is_int8(self, node, *activations: str) -> tuple[float, int] | None:
        """Output params when `node` runs in int8: all activation inputs int8, output quantized."""
        if all(self.env[a].quant is not None for a in activations):
            return self.out_quant(node.output[0])
        return None

    def const_input(self, node, name: str) -> np.ndarray:
        """A constant operand as float32 (dequantized weights included); it must not depend on the input size."""
        if name in self.weights:
            q, s, z, axis = self.weights[name]
            shape = [1] * q.ndim
            if s.size > 1:
                shape[axis] = -1
            return ((q.astype(np.float32) - z.reshape(shape)) * s.reshape(shape)).astype(np.float32)
        a, b = self.tr.consts[name], self.pr.consts[name]
        if a.shape != b.shape or not np.array_equal(a, b):
            raise NotImplementedError(f"node {node.name}: constant {name!r} depends on the input size")
        return a

    # ---- driver

    def convert(self) -> bytes:
        tfl, tr = self.tfl, self.tr
        shape, probe = tr.input_shape, self.pr.input_shape
        rank = len(shape)
        self.env[tr.input] = self.new(tr.input, shape, probe, _identity(rank), None)
        inputs = [self.env[tr.input].index]
        for node in tr.nodes:
            handler = getattr(self, f"op_{node.op_type}", None)
            if handler is None:
                raise NotImplementedError(f"node {node.name}: ONNX op {node.op_type} has no TFLite mapping here")
            handler(node, {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute})
        outputs = []
        for name in tr.outputs:
            t = self.ordered(self.env[name])
            if t.quant is not None:
                out = self.new(name, t.shape, t.probe, t.perm, None)
                self.op("DEQUANTIZE", [t.index], [out.index], version=2)
                t = out
            else:
                self.tensors[t.index].name = name
            outputs.append(t.index)
        graph = tfl.SubGraphT()
        graph.tensors, graph.operators, graph.inputs, graph.outputs = self.tensors, self.ops, inputs, outputs
        graph.name = "main"
        model = tfl.ModelT()
        model.version, model.subgraphs, model.buffers = 3, [graph], self.buffers
        model.description = "avemo-edge distill/tflite.py (from int8 QDQ ONNX)"
        model.operatorCodes = [None] * len(self.codes)
        for (code, version), i in self.codes.items():
            c = tfl.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), version
            model.operatorCodes[i] = c
        import flatbuffers
        builder = flatbuffers.Builder(1 << 20)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    # ---- quantization nodes

    def op_QuantizeLinear(self, node, attrs) -> None:
        quant = self.q_params(*node.input[1:3])
        self.env[node.output[0]] = self.int8(self.env[node.input[0]], quant, node.output[0])

    def op_DequantizeLinear(self, node, attrs) -> None:
        src = node.input[0]
        if src in self.tr.consts:
            z = self.tr.consts[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros(1, np.int8)
            self.weights[node.output[0]] = (self.tr.consts[src], self.tr.consts[node.input[1]].astype(np.float32),
                                            z.astype(np.int64), attrs.get("axis", 1))
            return
        t = self.env[src]
        if t.quant != self.q_params(*node.input[1:3]):
            raise NotImplementedError(f"node {node.name}: DequantizeLinear params differ from its QuantizeLinear")
        self.env[node.output[0]] = t

    # ---- int8 compute ops

    def _quantized_weights(self, node, name: str, n_out: int) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.weights:
            raise NotImplementedError(f"node {node.name}: weight {name!r} is not int8 (DequantizeLinear of a constant)")
        q, s, z, _ = self.weights[name]
        if q.dtype != np.int8 or np.any(z != 0):
            raise NotImplementedError(f"node {node.name}: weights must be int8 with zero point 0")
        return q, np.broadcast_to(s.reshape(-1), (n_out,)).astype(np.float32)

    def _bias(self, node, name: str, in_scale: float, w_scales: np.ndarray) -> np.ndarray:
        scale = (np.float32(in_scale) * w_scales).astype(np.float32)
        if not name:
            return np.zeros(len(w_scales), np.int32)
        if name in self.weights:
            q, s, _, _ = self.weights[name]
            if np.allclose(s, scale, rtol=1e-6, atol=0):
                return q.astype(np.int32)
            real = q.astype(np.float64) * s
        else:
            real = self.const_input(node, name).astype(np.float64)
        return np.clip(np.rint(real / scale), -2**31, 2**31 - 1).astype(np.int32)

    def op_Conv(self, node, attrs) -> None:
        """CONV_2D / DEPTHWISE_CONV_2D, int8 when input and output are quantized, else float32
        (a float stem convolution that reads the float front end)."""
        x, w_name = node.input[0], node.input[1]
        quant = self.is_int8(node, x)
        t = self.env[x] if quant is not None else self.float_(self.env[x])
        rank = len(t.perm)
        if rank not in (3, 4):
            raise NotImplementedError(f"node {node.name}: only 1-D and 2-D convolutions")
        n_in = t.onnx_shape()[0][1]
        w, w_scales = self._conv_weights(node, w_name, quant)
        group = attrs.get("group", 1)
        k = list(attrs.get("kernel_shape", w.shape[2:]))
        strides, dilations = list(attrs.get("strides", [1] * len(k))), list(attrs.get("dilations", [1] * len(k)))
        pads = list(attrs.get("pads", [0] * 2 * len(k)))
        t = self.relayout(t, _channels_last(rank))
        if rank == 3:  # [N, L, C] -> [N, 1, L, C]
            flat = self.new(self.tensors[t.index].name + "/2d", (t.shape[0], 1, *t.shape[1:]),
                            (t.probe[0], 1, *t.probe[1:]), _channels_last(4), t.quant)
            self.reshape_op(t, flat)
            t, w = flat, w[:, :, None, :]
            k, strides, dilations, pads = [1, *k], [1, *strides], [1, *dilations], [0, pads[0], 0, pads[1]]
        n_out = w.shape[0]
        depthwise = group > 1 and group == n_in and w.shape[1] == 1
        if group != 1 and not depthwise:
            raise NotImplementedError(f"node {node.name}: grouped convolution (group={group}) is not supported")
        padding, t = self._padding(node, t, k, strides, dilations, pads)
        layout, axis = ((1, 2, 3, 0), 3) if depthwise else ((0, 2, 3, 1), 0)
        bias_name = node.input[2] if len(node.input) > 2 else ""
        if quant is None:
            weights = self.const(w_name, w.transpose(layout), "float32")
            bias_f = self.const_input(node, bias_name) if bias_name else np.zeros(n_out, np.float32)
            bias = self.const(bias_name or node.name + "/bias", bias_f, "float32")
        else:
            zeros = np.zeros(n_out, np.int64)
            weights = self.const(w_name, w.transpose(layout), "int8", (w_scales, zeros, axis))
            bias = self.const(bias_name or node.name + "/bias", self._bias(node, bias_name, t.quant[0], w_scales),
                              "int32", (t.quant[0] * w_scales, zeros, 0))
        out_name = node.output[0]
        if rank == 3:
            shape, probe = self.tr.shapes[out_name], self.pr.shapes[out_name]
            out = self.new(out_name + "/2d", (shape[0], 1, shape[2], shape[1]),
                           (probe[0], 1, probe[2], probe[1]), _channels_last(4), quant)
        else:
            out = self.value(out_name, _channels_last(4), quant)
        fields = dict(padding=padding, strideH=strides[0], strideW=strides[1],
                      dilationHFactor=dilations[0], dilationWFactor=dilations[1])
        if depthwise:
            self.op("DEPTHWISE_CONV_2D", [t.index, weights, bias], [out.index],
                    self.options("DepthwiseConv2DOptions", depthMultiplier=n_out // n_in, **fields), version=3)
        else:
            self.op("CONV_2D", [t.index, weights, bias], [out.index], self.options("Conv2DOptions", **fields),
                    version=3 if quant else 1)
        if rank == 3:
            self.reshape_op(out, self.value(out_name, _channels_last(3), quant))

    def _conv_weights(self, node, w_name: str, quant) -> tuple[np.ndarray, np.ndarray | None]:
        """[O, I / group, *kernel]: int8 with per-channel scales when `quant`, else float32 and None."""
        if quant is None:
            return self.const_input(node, w_name).astype(np.float32), None
        n_out = self.weights[w_name][0].shape[0] if w_name in self.weights else 0
        return self._quantized_weights(node, w_name, n_out)

    def _padding(self, node, t: _T, k, strides, dilations, pads) -> tuple[int, _T]:
        """TFLite padding for ONNX pads: VALID, SAME when it pads the same way, else PAD + VALID."""
        Padding = self.tfl.Padding
        n = len(k)
        begin, end = pads[:n], pads[n:]
        if not any(pads):
            return Padding.VALID, t
        sizes = [(t.shape[1 + i], t.probe[1 + i]) for i in range(n)]

        def same(i: int, size: int) -> bool:
            out = -(-size // strides[i])
            total = max((out - 1) * strides[i] + (k[i] - 1) * dilations[i] + 1 - size, 0)
            return (begin[i], end[i]) == (total // 2, total - total // 2)

        if all(same(i, s) for i in range(n) for s in sizes[i]):
            return Padding.SAME, t
        if node.op_type != "Conv":
            raise NotImplementedError(f"node {node.name}: pooling pads {pads} are neither VALID nor SAME")
        paddings = np.array([[0, 0], *zip(begin, end), [0, 0]], np.int32)
        name = self.tensors[t.index].name + "/pad"
        out = self.new(name, [s + int(p.sum()) for s, p in zip(t.shape, paddings)],
                       [s + int(p.sum()) for s, p in zip(t.probe, paddings)], t.perm, t.quant)
        self.op("PAD", [t.index, self.const(name + "/paddings", paddings, "int32")], [out.index], version=2)
        return Padding.VALID, out

    def op_Gemm(self, node, attrs) -> None:
        a = node.input[0]
        quant = self.is_int8(node, a)
        if quant is None or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise NotImplementedError(f"node {node.name}: only int8 Gemm with alpha = beta = 1, transA = 0")
        t = self.ordered(self.env[a])
        w, trans_b = node.input[1], attrs.get("transB", 0)
        n_out = self.weights[w][0].shape[0 if trans_b else 1] if w in self.weights else 0
        q, w_scales = self._quantized_weights(node, w, n_out)
        q = q if trans_b else q.T
        in_scale = t.quant[0]
        weights = self.const(w, q, "int8", (w_scales, np.zeros(n_out, np.int64), 0))
        bias_name = node.input[2] if len(node.input) > 2 else ""
        bias = self.const(bias_name or node.name + "/bias", self._bias(node, bias_name, in_scale, w_scales),
                          "int32", (in_scale * w_scales, np.zeros(n_out, np.int64), 0))
        out = self.value(node.output[0], (0, 1), quant)
        self.op("FULLY_CONNECTED", [t.index, weights, bias], [out.index], self.options("FullyConnectedOptions"),
                version=4)

    def op_MaxPool(self, node, attrs) -> None:
        t = self.env[node.input[0]]
        plain = not attrs.get("ceil_mode", 0) and all(d == 1 for d in attrs.get("dilations", [1, 1]))
        if len(t.perm) != 4 or not plain:
            raise NotImplementedError(f"node {node.name}: only 2-D MaxPool without ceil_mode/dilations")
        k, strides = attrs["kernel_shape"], attrs.get("strides", [1, 1])
        t = self.relayout(t, _channels_last(4))
        padding, t = self._padding(node, t, k, strides, [1, 1], attrs.get("pads", [0] * 4))
        out = self.value(node.output[0], _channels_last(4), t.quant)
        self.op("MAX_POOL_2D", [t.index], [out.index],
                self.options("Pool2DOptions", padding=padding, strideH=strides[0], strideW=strides[1],
                             filterHeight=k[0], filterWidth=k[1]), version=2 if t.quant else 1)

    def op_GlobalAveragePool(self, node, attrs) -> None:
        rank = len(self.env[node.input[0]].perm)
        self._reduce(node, "MEAN", list(range(2, rank)), True)

    def op_ReduceMean(self, node, attrs) -> None:
        self._reduce_axes(node, attrs, "MEAN")

    def op_ReduceMax(self, node, attrs) -> None:
        self._reduce_axes(node, attrs, "REDUCE_MAX")

    def _reduce_axes(self, node, attrs, builtin: str) -> None:
        rank = len(self.env[node.input[0]].perm)
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.const_input(node, node.input[1]).tolist()
        axes = list(range(rank)) if axes is None else [a % rank for a in axes]
        self._reduce(node, builtin, axes, bool(attrs.get("keepdims", 1)))

    def _reduce(self, node, builtin: str, axes: list[int], keepdims: bool) -> None:
        t = self.env[node.input[0]]
        quant = self.is_int8(node, node.input[0])
        if quant is None:
            t = self.float_(t)
        tfl_axes = sorted(t.perm.index(a) for a in axes)
        if keepdims:
            perm = t.perm
        else:
            kept = [p for p in t.perm if p not in axes]
            perm = tuple(sorted(kept).index(p) for p in kept)
        out = self.value(node.output[0], perm, quant)
        axes_t = self.const(node.output[0] + "/axes", np.array(tfl_axes, np.int32), "int32")
        self.op(builtin, [t.index, axes_t], [out.index], self.options("ReducerOptions", keepDims=keepdims),
                version=2 if quant else 1)

    def op_Relu(self, node, attrs) -> None:
        self._activation(node, "RELU")

    def op_Clip(self, node, attrs) -> None:
        lo = attrs.get("min", self.const_input(node, node.input[1]) if len(node.input) > 1 and node.input[1] else None)
        hi = attrs.get("max", self.const_input(node, node.input[2]) if len(node.input) > 2 and node.input[2] else None)
        bounds = (None if lo is None else float(lo), None if hi is None else float(hi))
        kinds = {(0.0, 6.0): "RELU6", (0.0, None): "RELU", (-1.0, 1.0): "RELU_N1_TO_1", (0.0, 1.0): "RELU_0_TO_1"}
        if bounds not in kinds:
            raise NotImplementedError(f"node {node.name}: Clip{bounds} is not a TFLite activation")
        self._activation(node, kinds[bounds])

    def _activation(self, node, builtin: str) -> None:
        t = self.env[node.input[0]]
        quant = self.is_int8(node, node.input[0])
        if quant is None:
            t = self.float_(t)
        out = self.value(node.output[0], t.perm, quant)
        self.op(builtin, [t.index], [out.index], version=2 if quant else 1)

    # ---- elementwise (int8 Add; float everything)

    def op_Add(self, node, attrs) -> None:
        self._binary(node, "ADD", "AddOptions")

    def op_Sub(self, node, attrs) -> None:
        self._binary(node, "SUB", "SubOptions")

    def op_Mul(self, node, attrs) -> None:
        self._binary(node, "MUL", "MulOptions")

    def op_Div(self, node, attrs) -> None:
        self._binary(node, "DIV", "DivOptions")

    def _binary(self, node, builtin: str, options: str) -> None:
        names = list(node.input[:2])
        live = [n for n in names if n in self.env]
        quant = self.is_int8(node, *live) if builtin == "ADD" and len(live) == 2 else None
        ts = [self.env[n] if quant else self.float_(self.env[n]) for n in live]
        ranks = {len(t.perm) for t in ts}
        if len(ts) == 2 and len(ranks) == 1 and ts[0].perm == ts[1].perm:
            perm = ts[0].perm
        else:
            ts = [self.ordered(t) for t in ts]
            perm = _identity(len(self.tr.shapes[node.output[0]]))
        operands, it = [], iter(ts)
        for n in names:
            operands.append(next(it).index if n in self.env else
                            self.const(n, self.const_input(node, n).astype(np.float32), "float32"))
        out = self.value(node.output[0], perm, quant)
        self.op(builtin, operands, [out.index], self.options(options), version=2 if quant else 1)

    def op_Log(self, node, attrs) -> None:
        self._float_unary(node, "LOG")

    def op_Sqrt(self, node, attrs) -> None:
        self._float_unary(node, "SQRT")

    def _float_unary(self, node, builtin: str) -> None:
        t = self.float_(self.env[node.input[0]])
        self.op(builtin, [t.index], [self.value(node.output[0], t.perm, None).index])

    def op_Sigmoid(self, node, attrs) -> None:
        self._float_unary(node, "LOGISTIC")

    def op_Resize(self, node, attrs) -> None:
        """RESIZE_NEAREST_NEIGHBOR for an integer nearest-neighbour upscale of H and W (each pixel
        repeated: what ONNX's asymmetric/floor, half_pixel/round_prefer_floor modes give then);
        int8 when the output keeps the input's quantization, else float."""
        modes = (attrs.get("coordinate_transformation_mode", b"half_pixel"), attrs.get("nearest_mode",
                                                                                      b"round_prefer_floor"))
        modes = tuple(m.decode() if isinstance(m, bytes) else m for m in modes)
        mode = attrs.get("mode", b"nearest")
        t = self.env[node.input[0]]
        shape, out_shape = t.onnx_shape()[0], self.tr.shapes[node.output[0]]
        exact = modes in {("asymmetric", "floor"), ("half_pixel", "round_prefer_floor"),
                          ("pytorch_half_pixel", "round_prefer_floor")}
        if (mode.decode() if isinstance(mode, bytes) else mode) != "nearest" or not exact or len(shape) != 4 \
                or tuple(out_shape[:2]) != tuple(shape[:2]) or any(o % i for o, i in zip(out_shape[2:], shape[2:])):
            raise NotImplementedError(f"node {node.name}: only nearest Resize by integer factors of H and W "
                                      f"({modes}, {shape} -> {out_shape})")
        quant = t.quant if t.quant is not None and self.out_quant(node.output[0]) == t.quant else None
        t = self.relayout(t if quant is not None else self.float_(t), _channels_last(4))
        size = self.const(node.output[0] + "/size", np.array(out_shape[2:], np.int32), "int32")
        out = self.value(node.output[0], _channels_last(4), quant)
        self.op("RESIZE_NEAREST_NEIGHBOR", [t.index, size], [out.index],
                self.options("ResizeNearestNeighborOptions", alignCorners=False, halfPixelCenters=False),
                version=2 if quant else 1)

    def op_MatMul(self, node, attrs) -> None:
        names = node.input[:2]
        rank = len(self.tr.shapes[node.output[0]])
        operands = []
        for n in names:
            if n in self.env:
                operands.append(self.ordered(self.float_(self.env[n])).index)
            else:
                c = self.const_input(node, n).astype(np.float32)
                operands.append(self.const(n, c.reshape((1,) * (rank - c.ndim) + c.shape), "float32"))
        out = self.value(node.output[0], _identity(rank), None)
        self.op("BATCH_MATMUL", operands, [out.index], self.options("BatchMatMulOptions"))

    # ---- layout and shape ops (free or cheap)

    def op_Transpose(self, node, attrs) -> None:
        t = self.env[node.input[0]]
        p = attrs.get("perm", list(range(len(t.perm)))[::-1])
        inverse = {a: i for i, a in enumerate(p)}
        self.env[node.output[0]] = _T(t.index, t.shape, t.probe, tuple(inverse[a] for a in t.perm), t.quant)

    def _reshape(self, node, attrs=None) -> None:
        t = self.ordered(self.env[node.input[0]], any_shape=True)
        self.reshape_op(t, self.value(node.output[0], _identity(len(self.tr.shapes[node.output[0]])), t.quant))

    op_Reshape = op_Flatten = op_Squeeze = op_Unsqueeze = _reshape

    def op_Identity(self, node, attrs) -> None:
        """An alias: of a value, or of a dequantized weight (the exporter shares equal biases)."""
        src, dst = node.input[0], node.output[0]
        if src in self.weights:
            self.weights[dst] = self.weights[src]
        else:
            self.env[dst] = self.env[src]

    def op_Concat(self, node, attrs) -> None:
        ts = [self.ordered(self.float_(self.env[n])) for n in node.input]
        rank = len(ts[0].perm)
        out = self.value(node.output[0], _identity(rank), None)
        self.op("CONCATENATION", [t.index for t in ts], [out.index],
                self.options("ConcatenationOptions", axis=attrs["axis"] % rank))

    def op_Slice(self, node, attrs) -> None:
        """STRIDED_SLICE; bounds that move with the input size are written relative to the end."""
        t = self.ordered(self.env[node.input[0]])
        rank = len(t.perm)
        a_shape, b_shape = self.tr.shapes[node.input[0]], self.pr.shapes[node.input[0]]

        def params(consts: dict, name_i: int, default):
            if len(node.input) > name_i and node.input[name_i]:
                if node.input[name_i] not in consts:
                    raise NotImplementedError(f"node {node.name}: Slice bounds must be constant")
                return [int(v) for v in consts[node.input[name_i]]]
            return default

        begin, end, strides = [0] * rank, [0] * rank, [1] * rank
        begin_mask = end_mask = (1 << rank) - 1
        starts = [params(c, 1, None) for c in (self.tr.consts, self.pr.consts)]
        ends = [params(c, 2, None) for c in (self.tr.consts, self.pr.consts)]
        axes = params(self.tr.consts, 3, list(range(len(starts[0]))))
        steps = params(self.tr.consts, 4, [1] * len(axes))
        for j, axis in enumerate(a % rank for a in axes):
            if steps[j] != 1:
                raise NotImplementedError(f"node {node.name}: Slice with step {steps[j]}")
            for bounds, out, mask in ((starts, begin, "begin"), (ends, end, "end")):
                size_a, size_b = a_shape[axis], b_shape[axis]
                va = min(max(bounds[0][j] + (size_a if bounds[0][j] < 0 else 0), 0), size_a)
                vb = min(max(bounds[1][j] + (size_b if bounds[1][j] < 0 else 0), 0), size_b)
                if mask == "end" and va == size_a and vb == size_b:
                    continue  # to the end: keep the mask bit
                if va == vb:
                    value = va
                elif va - size_a == vb - size_b:
                    value = va - size_a
                else:
                    raise NotImplementedError(f"node {node.name}: slice bound depends on the input size non-linearly")
                out[axis] = value
                if mask == "begin":
                    begin_mask &= ~(1 << axis)
                else:
                    end_mask &= ~(1 << axis)
        name = node.output[0]
        out = self.value(name, _identity(rank), t.quant)
        self.op("STRIDED_SLICE", [t.index, self.const(name + "/begin", np.array(begin, np.int32), "int32"),
                                  self.const(name + "/end", np.array(end, np.int32), "int32"),
                                  self.const(name + "/strides", np.array(strides, np.int32), "int32")],
                [out.index], self.options("StridedSliceOptions", beginMask=begin_mask, endMask=end_mask),
                version=2 if t.quant else 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="distill.tflite", description=__doc__.split("\n")[0])
    p.add_argument("onnx", help="int8 QDQ ONNX (a bundle's model.int8.onnx)")
    p.add_argument("tflite", help="output .tflite")
    p.add_argument("--fixed-shape", default=None, help="pin the input shape, e.g. 1,32000")
    args = p.parse_args(argv)
    shape = [int(d) for d in args.fixed_shape.split(",")] if args.fixed_shape else None
    print(onnx_to_tflite(args.onnx, args.tflite, shape))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
