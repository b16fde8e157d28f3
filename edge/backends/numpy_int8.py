"""numpy backend: runs a bundle's `model.npz` (docs/bundle-format.md) with numpy only.

In:  {input name: float32 array of the bundle's input shape}.
Out: {role ("logits", "embedding"): float32 array}, fresh copies owned by the caller.

At load the graph is turned into a plan, once: DequantizeLinear of constant weights is
folded, and Conv/MatMul/Gemm whose input is DequantizeLinear(QuantizeLinear(...)) and
whose weight is DequantizeLinear(int8 constant) become integer steps: (x_q - zp) and w_q
are multiplied as exact integers held in float32 (float64 when a dot product could pass
2**24) and the scales are applied after, per output channel, which is what onnxruntime's
QLinearConv/QGemm compute up to the final rounding. QuantizeLinear rounds half to even and
saturates, as ONNX does. Steps whose outputs nothing reads are dropped.

Fewer passes per activation: a per-tensor QuantizeLinear read only by matching
DequantizeLinears keeps q - zp as float32 ("centered"), so its readers need one multiply
and integer steps multiply it as is; when such a QuantizeLinear alone reads an integer
step's output, its divide/round/saturate joins that step's epilogue. Pools take one ufunc
per kernel offset over strided views.

Float depthwise convolutions are tap sums over strided views (no im2col) and a Relu that
alone reads a float Conv runs in its epilogue.

Every step keeps its activation buffers: after the first run with a given input shape,
runs reuse them (out= everywhere numpy allows, conv as im2col into a kept buffer + matmul
out=), so memory stays flat over any number of runs. Buffers are per step, except the
padded input and tap product of depthwise steps, which live only while the step runs and
are shared (one per shape).
A session sets numpy's OpenBLAS pool to `threads` for each run and restores it after.
"""
from __future__ import annotations

import ctypes
import itertools
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import as_strided

from edge.bundle import Bundle
from edge.errors import BundleError

NAME = "numpy"
Env = dict[str, np.ndarray]
Step = Callable[[Env], None]
_EXACT_LIMIT = float(2**24)
_ONNX_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 9: np.bool_, 11: np.float64}


def available() -> bool:
    return True


@dataclass
class _Node:
    index: int
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict

    def input(self, i: int) -> str:
        return self.inputs[i] if i < len(self.inputs) else ""

    def label(self) -> str:
        return f"node {self.index} ({self.op} {self.name!r})"


@dataclass
class _QAct:
    """A DequantizeLinear output whose input is a per-tensor quantized activation."""

    source: str
    scale: float
    zero: float  # still to subtract from the source: 0 when the source is centered (_Quantize)
    max_abs: float  # the largest |q - zero|


@dataclass
class _QWeight:
    """A folded DequantizeLinear of an integer constant."""

    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    axis: int


@dataclass
class _Ctx:
    path: Path
    consts: Env
    outputs: set[str]
    readers: dict[str, list[_Node]] = field(default_factory=dict)  # tensor name -> nodes reading it
    qacts: dict[str, _QAct] = field(default_factory=dict)
    qweights: dict[str, _QWeight] = field(default_factory=dict)
    centered: set[str] = field(default_factory=set)  # outputs of centered QuantizeLinear steps
    scratch: dict = field(default_factory=dict)  # buffers a step uses only while it runs, shared (_Depthwise)

    def const(self, name: str, node: _Node) -> np.ndarray:
        if name not in self.consts:
            raise BundleError(f"{self.path}: {node.label()} needs input {name!r} to be a constant; "
                              f"re-export the model")
        return self.consts[name]


def _buf(bufs: dict, tag: str, shape: tuple, dtype=np.float32, fill: float = 0.0) -> np.ndarray:
    """The step's kept buffer `tag`, reallocated only when the shape or dtype changes."""
    b = bufs.get(tag)
    if b is None or b.shape != shape or b.dtype != dtype:
        b = bufs[tag] = np.full(shape, fill, dtype)
    return b


def _clip(x: np.ndarray, lo, hi, out: np.ndarray) -> np.ndarray:
    """np.clip as two ufunc calls: on the small arrays here np.clip's Python wrapper costs more."""
    np.maximum(x, lo, out=out)
    return np.minimum(out, hi, out=out)


def _along(v: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """A per-axis vector shaped to broadcast along `axis` of an ndim-D array."""
    if v.ndim == 0:
        return v
    shape = [1] * ndim
    shape[axis % ndim] = v.size
    return v.reshape(shape)


# ---------------------------------------------------------------- elementwise ops

def _unary(fn: Callable) -> Callable[[_Node, _Ctx], Step]:
    def build(node: _Node, ctx: _Ctx) -> Step:
        src, dst, bufs = node.input(0), node.outputs[0], {}

        def step(env: Env) -> None:
            x = env[src]
            env[dst] = fn(x, _buf(bufs, "y", x.shape, x.dtype), node.attrs)
        return step
    return build


def _binary(fn: Callable) -> Callable[[_Node, _Ctx], Step]:
    def build(node: _Node, ctx: _Ctx) -> Step:
        a_name, b_name, dst, bufs = node.input(0), node.input(1), node.outputs[0], {}

        def step(env: Env) -> None:
            a, b = env[a_name], env[b_name]
            out = _buf(bufs, "y", np.broadcast_shapes(a.shape, b.shape), np.result_type(a, b))
            env[dst] = fn(a, b, out=out)
        return step
    return build


def _div(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    return (np.floor_divide if out.dtype.kind in "iu" else np.divide)(a, b, out=out)


def _pow(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    return np.multiply(a, a, out=out) if np.all(b == 2) else np.power(a, b, out=out)


def _hard_sigmoid(x: np.ndarray, y: np.ndarray, attrs: dict, alpha: float = 0.2) -> np.ndarray:
    np.multiply(x, attrs.get("alpha", alpha), out=y)
    np.add(y, attrs.get("beta", 0.5), out=y)
    return _clip(y, 0.0, 1.0, y)


def _hard_swish(x: np.ndarray, y: np.ndarray, attrs: dict) -> np.ndarray:
    _hard_sigmoid(x, y, {}, alpha=1.0 / 6.0)
    return np.multiply(y, x, out=y)


def _sigmoid(x: np.ndarray, y: np.ndarray, attrs: dict) -> np.ndarray:
    np.multiply(x, 0.5, out=y)  # 1 / (1 + e^-x) == (1 + tanh(x / 2)) / 2, without overflow
    np.tanh(y, out=y)
    np.multiply(y, 0.5, out=y)
    return np.add(y, 0.5, out=y)


def _softmax(x: np.ndarray, y: np.ndarray, attrs: dict) -> np.ndarray:
    axis = attrs.get("axis", -1)
    np.subtract(x, np.max(x, axis=axis, keepdims=True), out=y)
    np.exp(y, out=y)
    return np.divide(y, np.sum(y, axis=axis, keepdims=True), out=y)


def _op_clip(node: _Node, ctx: _Ctx) -> Step:
    src, lo_name, hi_name, dst, bufs = node.input(0), node.input(1), node.input(2), node.outputs[0], {}
    lo_attr, hi_attr = node.attrs.get("min", -np.inf), node.attrs.get("max", np.inf)

    def step(env: Env) -> None:
        x = env[src]
        lo = env[lo_name] if lo_name else lo_attr
        hi = env[hi_name] if hi_name else hi_attr
        env[dst] = _clip(x, lo, hi, _buf(bufs, "y", x.shape, x.dtype))
    return step


def _op_cast(node: _Node, ctx: _Ctx) -> Step:
    src, dst, bufs = node.input(0), node.outputs[0], {}
    dtype = _ONNX_DTYPES[node.attrs["to"]]

    def step(env: Env) -> None:
        x = env[src]
        y = _buf(bufs, "y", x.shape, dtype)
        np.copyto(y, x, casting="unsafe")
        env[dst] = y
    return step


# ---------------------------------------------------------------- quantization

@dataclass
class _Quantize:
    """QuantizeLinear: x / scale, rounded half to even (as ONNX), saturated, plus the zero point.

    A `centered` step keeps q - zero as float32 instead of q: every reader is then a
    DequantizeLinear with the same scale and zero point (`_centered`), which needs one multiply,
    or an integer Conv/Gemm step, which multiplies q - zero directly."""

    src: str
    dst: str
    scale: np.ndarray
    zero: np.ndarray
    axis: int
    lo: np.ndarray  # saturation bounds of q - zero
    hi: np.ndarray
    centered: bool
    bufs: dict = field(default_factory=dict)

    def __call__(self, env: Env) -> None:
        x = env[self.src]
        f = _buf(self.bufs, "f", x.shape)
        np.divide(x, _along(self.scale, self.axis, x.ndim), out=f)
        np.rint(f, out=f)  # round half to even, as ONNX
        _clip(f, _along(self.lo, self.axis, x.ndim), _along(self.hi, self.axis, x.ndim), f)
        if self.centered:
            env[self.dst] = f
            return
        q = _buf(self.bufs, "q", x.shape, self.zero.dtype)
        env[self.dst] = np.add(f, _along(self.zero, self.axis, x.ndim), out=q, casting="unsafe")


def _op_quantize(node: _Node, ctx: _Ctx) -> _Quantize:
    scale = ctx.const(node.input(1), node).astype(np.float32)
    zero = ctx.const(node.input(2), node) if node.input(2) else np.zeros((), np.uint8)
    info = np.iinfo(zero.dtype)
    centered = _centered(node, scale, zero, ctx)
    if centered:
        ctx.centered.add(node.outputs[0])
    lo, hi = (np.float32(bound) - zero.astype(np.float32) for bound in (info.min, info.max))
    return _Quantize(node.input(0), node.outputs[0], scale, zero, node.attrs.get("axis", 1), lo, hi, centered)


def _centered(node: _Node, scale: np.ndarray, zero: np.ndarray, ctx: _Ctx) -> bool:
    """Whether a per-tensor QuantizeLinear may keep q - zero: it feeds only DequantizeLinears with
    the same scale and zero point, and neither its input nor its output is a constant or graph output."""
    dst = node.outputs[0]
    if scale.size != 1 or zero.size != 1 or dst in ctx.outputs or node.input(0) in ctx.consts:
        return False
    readers = ctx.readers.get(dst, [])
    return bool(readers) and all(r.op == "DequantizeLinear" and r.input(0) == dst and r.inputs.count(dst) == 1
                                 and _same_params(r, scale, zero, ctx) for r in readers)


def _same_params(dq: _Node, scale: np.ndarray, zero: np.ndarray, ctx: _Ctx) -> bool:
    s = ctx.consts.get(dq.input(1))
    z = ctx.consts.get(dq.input(2)) if dq.input(2) else np.zeros((), zero.dtype)
    return (s is not None and z is not None and s.size == 1 and z.size == 1 and z.dtype == zero.dtype
            and np.float32(s.reshape(())) == scale.reshape(()) and z.reshape(()) == zero.reshape(()))


def _dq_parts(node: _Node, ctx: _Ctx) -> tuple[np.ndarray, np.ndarray, int]:
    scale = ctx.const(node.input(1), node).astype(np.float32)
    zero = ctx.const(node.input(2), node) if node.input(2) else np.zeros((), np.int32)
    return scale, zero, node.attrs.get("axis", 1)


def _dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int,
                out: np.ndarray) -> np.ndarray:
    """(q - zero) * scale; zero None: q is already q - zero (a centered QuantizeLinear's output)."""
    if zero is None:
        return np.multiply(q, _along(scale, axis, q.ndim), out=out)
    np.subtract(q, _along(zero, axis, q.ndim), out=out, dtype=np.float32)
    return np.multiply(out, _along(scale, axis, q.ndim), out=out)


def _op_dequantize(node: _Node, ctx: _Ctx) -> Step | None:
    scale, zero, axis = _dq_parts(node, ctx)
    src, dst = node.input(0), node.outputs[0]
    if src in ctx.consts:  # fold: weights and biases are dequantized once, at load
        q = ctx.consts[src]
        ctx.consts[dst] = _dequantize(q, scale, zero, axis, np.empty(q.shape, np.float32))
        if q.dtype in (np.int8, np.uint8):
            ctx.qweights[dst] = _QWeight(q, scale, zero, axis)
        return None
    centered = src in ctx.centered
    if scale.size == 1 and zero.size == 1:
        info = np.iinfo(zero.dtype)
        z = float(zero.reshape(()))
        ctx.qacts[dst] = _QAct(src, float(scale.reshape(())), 0.0 if centered else z, max(z - info.min, info.max - z))
    zero_or_none = None if centered else zero
    bufs: dict = {}

    def step(env: Env) -> None:
        q = env[src]
        env[dst] = _dequantize(q, scale, zero_or_none, axis, _buf(bufs, "y", q.shape))
    return step


# ---------------------------------------------------------------- conv, pooling, dense

def _pad_into(bufs: dict, x: np.ndarray, pads: list[int], fill: float, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Copy x (cast to dtype) into a kept padded buffer; returns (padded, interior view)."""
    nd = x.ndim - 2
    shape = x.shape[:2] + tuple(s + pads[i] + pads[i + nd] for i, s in enumerate(x.shape[2:]))
    padded = _buf(bufs, "pad", shape, dtype, fill)
    inner = padded[(slice(None), slice(None)) + tuple(slice(pads[i], pads[i] + s) for i, s in enumerate(x.shape[2:]))]
    np.copyto(inner, x, casting="unsafe")
    return padded, inner


@dataclass
class _Window:
    """Sliding-window geometry shared by Conv and the pools (ONNX attribute semantics)."""

    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    pads: list[int]

    @classmethod
    def from_attrs(cls, attrs: dict, kernel: list[int], node: _Node, ctx: _Ctx) -> "_Window":
        nd = len(kernel)
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or attrs.get("ceil_mode", 0):
            raise BundleError(f"{ctx.path}: {node.label()}: auto_pad/ceil_mode are not supported; "
                              f"export with explicit pads and ceil_mode=False")
        w = cls(list(kernel), list(attrs.get("strides", [1] * nd)), list(attrs.get("dilations", [1] * nd)),
                list(attrs.get("pads", [0] * 2 * nd)))
        sizes = (len(w.kernel), len(w.strides), len(w.dilations), len(w.pads) // 2, (len(w.pads) + 1) // 2)
        values = w.kernel + w.strides + w.dilations + w.pads
        if len(set(sizes)) != 1 or not all(isinstance(v, int) and 0 <= v < 1 << 16 for v in values) \
                or min(w.kernel + w.strides + w.dilations, default=0) < 1:
            raise ValueError(f"inconsistent kernel/strides/dilations/pads {values}")
        return w

    def out_shape(self, padded: tuple[int, ...]) -> tuple[int, ...]:
        return tuple((s - d * (k - 1) - 1) // t + 1
                     for s, k, t, d in zip(padded, self.kernel, self.strides, self.dilations))

    def view(self, xp: np.ndarray) -> np.ndarray:
        """Read-only view [N, C, *kernel, *out] of the padded input xp."""
        sp = xp.strides[2:]
        shape = xp.shape[:2] + tuple(self.kernel) + self.out_shape(xp.shape[2:])
        strides = (xp.strides[:2] + tuple(s * d for s, d in zip(sp, self.dilations))
                   + tuple(s * t for s, t in zip(sp, self.strides)))
        return as_strided(xp, shape, strides, writeable=False)

    def taps(self, xp: np.ndarray) -> list[np.ndarray]:
        """One view [N, C, *out] of the padded input xp per kernel offset."""
        out = self.out_shape(xp.shape[2:])
        offsets = itertools.product(*(range(0, k * d, d) for k, d in zip(self.kernel, self.dilations)))
        return [xp[(slice(None), slice(None)) + tuple(slice(o, o + t * (n - 1) + 1, t)
                                                      for o, t, n in zip(offs, self.strides, out))]
                for offs in offsets]


@dataclass
class _Epilogue:
    """acc * mult + bias, as float32 (acc float32 or float64; mult and bias per output channel).

    After `fuse(quantize)` it also does that centered QuantizeLinear's work: the scale is
    folded into mult and bias, and the result is rounded half to even and clipped to the
    range of q - zero, which is what the step then writes."""

    mult: np.ndarray | None
    bias: np.ndarray | None
    clip: tuple[float, float] | None = None
    relu: bool = False  # a float Conv's Relu, fused by _fuse_relu

    def __call__(self, bufs: dict, acc: np.ndarray) -> np.ndarray:
        y = acc if acc.dtype == np.float32 else _buf(bufs, "y", acc.shape)
        if self.mult is not None:
            np.multiply(acc, self.mult, out=y, casting="unsafe")
        elif y is not acc:
            np.copyto(y, acc, casting="unsafe")
        if self.bias is not None:
            np.add(y, self.bias, out=y)
        if self.relu:
            np.maximum(y, 0.0, out=y)
        if self.clip is not None:
            np.rint(y, out=y)
            _clip(y, *self.clip, y)
        return y

    def fuse(self, quantize: _Quantize) -> None:
        inv = 1.0 / np.float64(quantize.scale.reshape(()))
        self.mult = np.float32(inv) if self.mult is None else (self.mult.astype(np.float64) * inv).astype(np.float32)
        self.bias = None if self.bias is None else (self.bias.astype(np.float64) * inv).astype(np.float32)
        self.clip = (float(quantize.lo.reshape(())), float(quantize.hi.reshape(())))


@dataclass
class _ConvBuffers:
    """What a Conv keeps for one input shape: made on the first run with that shape."""

    key: tuple
    padded: np.ndarray | None  # x - zero, padded, in the compute dtype; None: x is used as is
    inner: np.ndarray | None  # the interior of padded, where x goes
    view: np.ndarray | None  # the window view of padded; None for a 1x1 stride-1 conv (no im2col)
    cols: np.ndarray | None  # im2col buffer
    operand: tuple  # the matmul operand's shape [N, group, K, positions]
    acc: np.ndarray  # [N, group, M / group, positions]
    out_shape: tuple  # [N, M, *out]


@dataclass
class _Conv:
    src: str
    dst: str
    window: _Window
    weights: np.ndarray  # [group, M / group, C / group * prod(kernel)], compute dtype
    zero: float | None  # input zero point still to subtract on the integer path, None on the float path
    epilogue: _Epilogue
    bufs: dict = field(default_factory=dict)
    kept: _ConvBuffers | None = None

    def __call__(self, env: Env) -> None:
        x = env[self.src]
        b = self._buffers(x)
        operand = x
        if b.padded is not None:
            np.copyto(b.inner, x, casting="unsafe")
            if self.zero:
                np.subtract(b.inner, self.zero, out=b.inner)
            operand = b.padded
        if b.view is not None:
            np.copyto(b.cols, b.view)
            operand = b.cols
        np.matmul(self.weights, operand.reshape(b.operand), out=b.acc)
        env[self.dst] = self.epilogue(self.bufs, b.acc.reshape(b.out_shape))

    def _buffers(self, x: np.ndarray) -> _ConvBuffers:
        key = (x.shape, x.dtype, x.flags.c_contiguous)
        if self.kept is None or self.kept.key != key:
            self.kept = self._make_buffers(x, key)
        return self.kept

    def _make_buffers(self, x: np.ndarray, key: tuple) -> _ConvBuffers:
        win, w = self.window, self.weights
        pointwise = all(v == 1 for v in win.kernel + win.strides)
        as_is = pointwise and not any(win.pads) and not self.zero and x.dtype == w.dtype and x.flags.c_contiguous
        padded, inner = (None, None) if as_is else _pad_into({}, x, win.pads, 0.0, w.dtype)
        view = None if pointwise else win.view(padded)
        out = win.out_shape(x.shape[2:] if as_is else padded.shape[2:])
        n, g = x.shape[0], w.shape[0]
        acc = np.empty((n, g, w.shape[1], math.prod(out)), w.dtype)
        cols = None if view is None else np.empty(view.shape, w.dtype)
        return _ConvBuffers(key, padded, inner, view, cols, (n, g, w.shape[2], -1), acc, (n, g * w.shape[1]) + out)


@dataclass
class _Depthwise:
    """A float depthwise Conv (one input channel per output channel) as a weighted sum of
    kernel taps over strided views of the padded input: no im2col buffer (9x the input
    for a 3x3 kernel), and one multiply-add pass per tap."""

    src: str
    dst: str
    window: _Window
    taps_w: list[np.ndarray]  # per kernel offset, the weights [C, 1, ..., 1]
    epilogue: _Epilogue
    scratch: dict  # the padded input and the tap product live here, shared by every _Depthwise
    bufs: dict = field(default_factory=dict)

    def __call__(self, env: Env) -> None:
        x = env[self.src]
        key = (x.shape, tuple(self.window.pads))  # same key, same padded geometry: the border stays 0
        padded, _ = _pad_into(self.scratch.setdefault(key, {}), x, self.window.pads, 0.0, np.float32)
        taps = self.window.taps(padded)
        y = _buf(self.bufs, "acc", taps[0].shape)
        tmp = _buf(self.scratch.setdefault(taps[0].shape, {}), "tap", taps[0].shape)
        np.multiply(taps[0], self.taps_w[0], out=y)
        for view, w in zip(taps[1:], self.taps_w[1:]):
            np.multiply(view, w, out=tmp)
            y += tmp
        env[self.dst] = self.epilogue(self.bufs, y)


def _int_dtype(w: np.ndarray, max_abs_x: float, axis_k: int):
    """float32 while every integer dot product stays below 2**24 (exact in sgemm), else float64."""
    bound = float(np.abs(w).sum(axis=axis_k).max()) * max_abs_x
    return np.float32 if bound < _EXACT_LIMIT else np.float64


def _op_conv(node: _Node, ctx: _Ctx) -> Step:
    x, w_name, b_name = node.input(0), node.input(1), node.input(2)
    w = ctx.const(w_name, node)
    group = node.attrs.get("group", 1)
    window = _Window.from_attrs(node.attrs, list(w.shape[2:]), node, ctx)
    bias = ctx.const(b_name, node).astype(np.float32) if b_name else None
    shape_m = (-1,) + (1,) * (w.ndim - 2)
    bias = None if bias is None else bias.reshape(shape_m)
    qa, qw = ctx.qacts.get(x), ctx.qweights.get(w_name)
    if qa is None or qw is None or (qw.scale.size > 1 and qw.axis != 0):
        if group > 1 and w.shape[0] == group and w.shape[1] == 1:
            taps = w.reshape(group, -1).T.astype(np.float32)
            shape = (group,) + (1,) * (w.ndim - 2)
            return _Depthwise(x, node.outputs[0], window, [t.reshape(shape) for t in taps], _Epilogue(None, bias),
                              ctx.scratch)
        mat = w.reshape(group, w.shape[0] // group, -1).astype(np.float32)
        return _Conv(x, node.outputs[0], window, mat, None, _Epilogue(None, bias))
    wi = (qw.q.astype(np.float64) - _along(qw.zero, 0, w.ndim)).reshape(w.shape[0], -1)
    dtype = _int_dtype(wi, qa.max_abs, 1)
    mat = wi.reshape(group, w.shape[0] // group, -1).astype(dtype)
    mult = (np.float32(qa.scale) * qw.scale.reshape(-1)).astype(np.float32).reshape(shape_m)
    return _Conv(qa.source, node.outputs[0], window, mat, qa.zero, _Epilogue(mult, bias))


@dataclass
class _Dense:
    src: str
    b: str  # weight name (read from env: constants live there too)
    dst: str
    trans_a: bool
    weights: np.ndarray | None  # [K, N] integer path weights, else None (float path)
    zero: float | None
    epilogue: _Epilogue  # alpha and a constant C * beta are folded in
    bias: str  # a C the graph computes (not a constant), added at run time times beta; "" if none
    beta: float
    bufs: dict = field(default_factory=dict)

    def __call__(self, env: Env) -> None:
        a = env[self.src]
        a = a.swapaxes(-1, -2) if self.trans_a else a
        a, w = (self._input(a), self.weights) if self.weights is not None else (a, env[self.b])
        shape = np.broadcast_shapes(a.shape[:-2], w.shape[:-2]) + (a.shape[-2], w.shape[-1])
        y = self.epilogue(self.bufs, np.matmul(a, w, out=_buf(self.bufs, "acc", shape, a.dtype)))
        if self.bias:
            c = env[self.bias]
            y = np.add(y, np.multiply(c, self.beta, out=_buf(self.bufs, "c", c.shape)), out=y)
        env[self.dst] = y

    def _input(self, a: np.ndarray) -> np.ndarray:
        if not self.zero and a.dtype == self.weights.dtype:
            return a
        xf = _buf(self.bufs, "x", a.shape, self.weights.dtype)
        return np.subtract(a, self.zero or 0.0, out=xf, dtype=xf.dtype)


def _op_matmul(node: _Node, ctx: _Ctx) -> Step:
    return _dense(node, ctx, node.input(1), trans_a=False, trans_b=False, alpha=1.0, bias="", beta=1.0)


def _op_gemm(node: _Node, ctx: _Ctx) -> Step:
    at = node.attrs
    return _dense(node, ctx, node.input(1), trans_a=bool(at.get("transA", 0)), trans_b=bool(at.get("transB", 0)),
                  alpha=at.get("alpha", 1.0), bias=node.input(2), beta=at.get("beta", 1.0))


def _dense(node: _Node, ctx: _Ctx, w_name: str, *, trans_a: bool, trans_b: bool, alpha: float,
           bias: str, beta: float) -> Step:
    x, dst = node.input(0), node.outputs[0]
    qa, qw = ctx.qacts.get(x), ctx.qweights.get(w_name)
    n_axis = 0 if trans_b else 1
    const_c = ctx.consts[bias].astype(np.float32) * np.float32(beta) if bias in ctx.consts else None
    run_c = "" if const_c is not None else bias
    if qa is None or qw is None or qw.q.ndim != 2 or (qw.scale.size > 1 and qw.axis % 2 != n_axis):
        if trans_b:  # float path with a transposed constant weight: transpose it once
            w_name = _transposed_const(ctx, w_name, node)
        mult = None if alpha == 1.0 else np.float32(alpha)
        return _Dense(x, w_name, dst, trans_a, None, None, _Epilogue(mult, const_c), run_c, beta)
    wi = qw.q.astype(np.float64) - _along(qw.zero, n_axis, 2)
    wi = wi.T if trans_b else wi
    mult = (np.float32(qa.scale * alpha) * qw.scale.reshape(-1)).astype(np.float32)
    w = wi.astype(_int_dtype(wi, qa.max_abs, 0))
    return _Dense(qa.source, w_name, dst, trans_a, w, qa.zero, _Epilogue(mult, const_c), run_c, beta)


def _transposed_const(ctx: _Ctx, name: str, node: _Node) -> str:
    key = f"{name}#T"
    ctx.consts[key] = np.ascontiguousarray(ctx.const(name, node).T)
    return key


def _op_pool(combine: Callable, fill: float) -> Callable[[_Node, _Ctx], Step]:
    """MaxPool (combine np.maximum) or AveragePool (np.add, then / taps): one ufunc per kernel offset."""
    def build(node: _Node, ctx: _Ctx) -> Step:
        window = _Window.from_attrs(node.attrs, node.attrs["kernel_shape"], node, ctx)
        mean = combine is np.add
        exclude_pad = mean and any(window.pads) and not node.attrs.get("count_include_pad", 0)
        src, dst, bufs = node.input(0), node.outputs[0], {}

        def step(env: Env) -> None:
            x = env[src]
            padded = _pad_into(bufs, x, window.pads, fill, np.float32)[0] if any(window.pads) else x
            views = window.taps(padded)
            y = _buf(bufs, "y", views[0].shape)
            np.copyto(y, views[0], casting="unsafe")
            for v in views[1:]:
                combine(y, v, out=y)
            if mean:
                np.divide(y, _tap_counts(bufs, x.shape, window, exclude_pad), out=y)
            env[dst] = y
        return step
    return build


def _tap_counts(bufs: dict, shape: tuple, window: _Window, exclude_pad: bool) -> np.ndarray:
    """Taps per output of an average: the kernel size, or only the taps inside the input."""
    if not exclude_pad:
        return np.float32(math.prod(window.kernel))
    if bufs.get("counts_for") != shape:
        ones, _ = _pad_into({}, np.ones((1, 1) + shape[2:], np.float32), window.pads, 0.0, np.float32)
        bufs["counts"], bufs["counts_for"] = sum(window.taps(ones)), shape
    return bufs["counts"]


def _op_global_average_pool(node: _Node, ctx: _Ctx) -> Step:
    src, dst, bufs = node.input(0), node.outputs[0], {}

    def step(env: Env) -> None:
        x = env[src]
        out = _buf(bufs, "y", x.shape[:2] + (1,) * (x.ndim - 2))
        env[dst] = np.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True, out=out)
    return step


def _op_reduce(reduce: Callable) -> Callable[[_Node, _Ctx], Step]:
    def build(node: _Node, ctx: _Ctx) -> Step:
        src, axes_name, dst, bufs = node.input(0), node.input(1), node.outputs[0], {}
        keep, noop = bool(node.attrs.get("keepdims", 1)), node.attrs.get("noop_with_empty_axes", 0)
        attr_axes = node.attrs.get("axes")

        def step(env: Env) -> None:
            x = env[src]
            axes = [int(a) for a in env[axes_name]] if axes_name else attr_axes
            if not axes and noop:
                env[dst] = x
                return
            ax = tuple(a % x.ndim for a in axes) if axes else tuple(range(x.ndim))
            shape = tuple(1 if i in ax else s for i, s in enumerate(x.shape) if keep or i not in ax)
            env[dst] = reduce(x, axis=ax, keepdims=keep, out=_buf(bufs, "y", shape, x.dtype))
        return step
    return build


# ---------------------------------------------------------------- shape ops (views where possible)

def _contiguous(bufs: dict, x: np.ndarray) -> np.ndarray:
    if x.flags.c_contiguous:
        return x
    b = _buf(bufs, "c", x.shape, x.dtype)
    np.copyto(b, x)
    return b


def _op_reshape(node: _Node, ctx: _Ctx) -> Step:
    src, shape_name, dst, bufs = node.input(0), node.input(1), node.outputs[0], {}
    allow_zero = node.attrs.get("allowzero", 0)

    def step(env: Env) -> None:
        x = env[src]
        shape = [int(s) for s in env[shape_name]]
        shape = [x.shape[i] if s == 0 and not allow_zero else s for i, s in enumerate(shape)]
        env[dst] = _contiguous(bufs, x).reshape(shape)
    return step


def _op_flatten(node: _Node, ctx: _Ctx) -> Step:
    src, dst, axis, bufs = node.input(0), node.outputs[0], node.attrs.get("axis", 1), {}

    def step(env: Env) -> None:
        x = env[src]
        env[dst] = _contiguous(bufs, x).reshape(int(np.prod(x.shape[:axis])), -1)
    return step


def _axes_op(fn: Callable) -> Callable[[_Node, _Ctx], Step]:
    """Squeeze / Unsqueeze: axes from input 1 (opset 13+) or the attribute."""
    def build(node: _Node, ctx: _Ctx) -> Step:
        src, axes_name, dst = node.input(0), node.input(1), node.outputs[0]
        attr_axes = node.attrs.get("axes")

        def step(env: Env) -> None:
            axes = [int(a) for a in env[axes_name]] if axes_name else attr_axes
            env[dst] = fn(env[src], axes)
        return step
    return build


def _squeeze(x: np.ndarray, axes: list[int] | None) -> np.ndarray:
    return np.squeeze(x, axis=None if axes is None else tuple(axes))


def _unsqueeze(x: np.ndarray, axes: list[int]) -> np.ndarray:
    return np.expand_dims(x, tuple(axes))


def _op_transpose(node: _Node, ctx: _Ctx) -> Step:
    src, dst, perm = node.input(0), node.outputs[0], node.attrs.get("perm")

    def step(env: Env) -> None:
        env[dst] = np.transpose(env[src], perm)
    return step


def _op_concat(node: _Node, ctx: _Ctx) -> Step:
    names, dst, axis, bufs = [n for n in node.inputs if n], node.outputs[0], node.attrs["axis"], {}

    def step(env: Env) -> None:
        parts = [env[n] for n in names]
        ax = axis % parts[0].ndim
        shape = parts[0].shape[:ax] + (sum(p.shape[ax] for p in parts),) + parts[0].shape[ax + 1:]
        out = _buf(bufs, "y", shape, np.result_type(*parts))
        env[dst] = np.concatenate(parts, axis=ax, out=out)
    return step


def _op_slice(node: _Node, ctx: _Ctx) -> Step:
    src, dst = node.input(0), node.outputs[0]
    starts, ends, axes_name, steps_name = node.input(1), node.input(2), node.input(3), node.input(4)

    def step(env: Env) -> None:
        x = env[src]
        index = [slice(None)] * x.ndim
        axes = env[axes_name] if axes_name else range(len(env[starts]))
        steps = env[steps_name] if steps_name else [1] * len(env[starts])
        for a, s, e, t in zip(axes, env[starts], env[ends], steps):
            index[int(a)] = slice(int(s), int(e), int(t))
        env[dst] = x[tuple(index)]
    return step


def _op_pad(node: _Node, ctx: _Ctx) -> Step:
    src, pads_name, value_name, dst, bufs = node.input(0), node.input(1), node.input(2), node.outputs[0], {}
    if node.attrs.get("mode", "constant") != "constant" or node.input(3):
        raise BundleError(f"{ctx.path}: {node.label()}: only constant padding on all axes is supported")

    def step(env: Env) -> None:
        x = env[src]
        pads = [int(p) for p in env[pads_name]]
        fill = float(env[value_name]) if value_name else 0.0
        nd = x.ndim
        shape = tuple(s + pads[i] + pads[i + nd] for i, s in enumerate(x.shape))
        y = _buf(bufs, "y", shape, x.dtype, fill)
        np.copyto(y[tuple(slice(pads[i], pads[i] + s) for i, s in enumerate(x.shape))], x)
        env[dst] = y
    return step


_RESIZE_EXACT = {("asymmetric", "floor"), ("half_pixel", "round_prefer_floor"),
                 ("pytorch_half_pixel", "round_prefer_floor")}
"""Nearest-neighbour coordinate modes under which an integer upscale repeats each element."""


def _op_resize(node: _Node, ctx: _Ctx) -> Step:
    """Resize, mode nearest, by integer factors: each element repeated (a feature-pyramid upsample)."""
    at = node.attrs
    modes = (at.get("coordinate_transformation_mode", "half_pixel"), at.get("nearest_mode", "round_prefer_floor"))
    if at.get("mode", "nearest") != "nearest" or modes not in _RESIZE_EXACT:
        raise BundleError(f"{ctx.path}: {node.label()}: only mode nearest with coordinate modes "
                          f"{sorted(_RESIZE_EXACT)} is supported, got {at.get('mode', 'nearest')} {modes}")
    src, scales_name, sizes_name, dst, bufs = node.input(0), node.input(2), node.input(3), node.outputs[0], {}
    scales = ctx.const(scales_name, node) if scales_name else np.zeros(0)
    sizes = ctx.const(sizes_name, node) if sizes_name else None

    def step(env: Env) -> None:
        x = env[src]
        factors = _resize_factors(x.shape, scales, sizes)
        y = _buf(bufs, "y", tuple(s * f for s, f in zip(x.shape, factors)), x.dtype)
        split = [d for s, f in zip(x.shape, factors) for d in (s, f)]
        np.copyto(y.reshape(split), x.reshape([d for s in x.shape for d in (s, 1)]))
        env[dst] = y
    return step


def _resize_factors(shape: tuple[int, ...], scales: np.ndarray, sizes: np.ndarray | None) -> list[int]:
    target = [int(s) for s in sizes] if sizes is not None and sizes.size else \
        [int(round(n * float(f))) for n, f in zip(shape, scales)]
    if len(target) != len(shape) or any(t % n for t, n in zip(target, shape)):
        raise ValueError(f"Resize of shape {list(shape)} to {target}: only integer upscale factors are supported")
    return [t // n for t, n in zip(target, shape)]


def _op_shape(node: _Node, ctx: _Ctx) -> Step:
    src, dst = node.input(0), node.outputs[0]
    start, end = node.attrs.get("start", 0), node.attrs.get("end")

    def step(env: Env) -> None:
        env[dst] = np.array(env[src].shape[start:end], np.int64)
    return step


def _op_gather(node: _Node, ctx: _Ctx) -> Step:
    src, idx, dst, axis = node.input(0), node.input(1), node.outputs[0], node.attrs.get("axis", 0)

    def step(env: Env) -> None:
        env[dst] = np.take(env[src], env[idx], axis=axis)
    return step


def _op_identity(node: _Node, ctx: _Ctx) -> Step:
    src, dst = node.input(0), node.outputs[0]

    def step(env: Env) -> None:
        env[dst] = env[src]
    return step


_OPS: dict[str, Callable[[_Node, _Ctx], Step | None]] = {
    "Conv": _op_conv, "Gemm": _op_gemm, "MatMul": _op_matmul,
    "Relu": _unary(lambda x, y, at: np.maximum(x, 0, out=y)), "Clip": _op_clip,
    "HardSigmoid": _unary(_hard_sigmoid), "HardSwish": _unary(_hard_swish), "Sigmoid": _unary(_sigmoid),
    "Sqrt": _unary(lambda x, y, at: np.sqrt(x, out=y)), "Log": _unary(lambda x, y, at: np.log(x, out=y)),
    "Exp": _unary(lambda x, y, at: np.exp(x, out=y)), "Softmax": _unary(_softmax),
    "Add": _binary(np.add), "Sub": _binary(np.subtract), "Mul": _binary(np.multiply), "Div": _binary(_div),
    "Pow": _binary(_pow), "Cast": _op_cast,
    "GlobalAveragePool": _op_global_average_pool,
    "AveragePool": _op_pool(np.add, 0.0), "MaxPool": _op_pool(np.maximum, -np.inf),
    "ReduceMean": _op_reduce(np.mean), "ReduceMax": _op_reduce(np.max), "ReduceSum": _op_reduce(np.sum),
    "Reshape": _op_reshape, "Flatten": _op_flatten, "Squeeze": _axes_op(_squeeze),
    "Unsqueeze": _axes_op(_unsqueeze), "Transpose": _op_transpose, "Concat": _op_concat,
    "Slice": _op_slice, "Pad": _op_pad, "Resize": _op_resize, "Identity": _op_identity, "Shape": _op_shape,
    "Gather": _op_gather,
    "QuantizeLinear": _op_quantize, "DequantizeLinear": _op_dequantize,
}
SUPPORTED_OPS = frozenset(_OPS)


# ---------------------------------------------------------------- loading and planning

def _read_npz(path: Path) -> tuple[dict, Env]:
    """(graph JSON, initializers) from model.npz; any corruption is a BundleError."""
    fix = "the payload is corrupt or not a model.npz; re-export it with `make quantize` or reinstall avemo-edge"
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise BundleError(f"{path}: file not found: {fix}") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, RuntimeError, AttributeError,
            TypeError, MemoryError) as e:  # np.load reports a damaged zip or npy in many ways
        raise BundleError(f"{path}: cannot read ({type(e).__name__}: {str(e)[:80]}): {fix}") from None
    try:
        graph = json.loads(arrays.pop("__graph__").tobytes().decode("utf-8"))
        _check_graph(graph)
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: bad __graph__ ({type(e).__name__}: {str(e)[:80]}): {fix}") from None
    return graph, {k[len("init/"):]: v for k, v in arrays.items() if k.startswith("init/")}


def _is_names(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def _check_graph(graph: object) -> None:
    if not isinstance(graph, dict) or not all(isinstance(graph.get(k), list) for k in ("inputs", "outputs", "nodes")):
        raise ValueError("graph must be an object with lists inputs, outputs and nodes")
    for v in graph["inputs"]:
        if not (isinstance(v, dict) and isinstance(v.get("name"), str) and isinstance(v.get("shape"), list)
                and all(isinstance(d, int) for d in v["shape"])):
            raise ValueError(f"bad input spec {str(v)[:60]}")
    if not _is_names(graph["outputs"]):
        raise ValueError("outputs must be a list of names")
    for n in graph["nodes"]:
        if not (isinstance(n, dict) and isinstance(n.get("op"), str) and isinstance(n.get("attrs", {}), dict)
                and _is_names(n.get("inputs")) and _is_names(n.get("outputs")) and n["outputs"]):
            raise ValueError(f"bad node {str(n)[:60]}")


@dataclass
class _Entry:
    """One planned step: the node it came from, the tensors it reads and the ones it writes."""

    node: _Node
    step: Step
    reads: set[str]
    writes: list[str]


def _nodes(graph: dict, ctx: _Ctx) -> list[_Node]:
    nodes = [_Node(i, raw["op"], str(raw.get("name", "")), raw["inputs"], raw["outputs"], raw.get("attrs", {}))
             for i, raw in enumerate(graph["nodes"])]
    for node in nodes:
        for name in node.inputs:
            ctx.readers.setdefault(name, []).append(node)
    return nodes


def _plan(graph: dict, ctx: _Ctx) -> list[_Entry]:
    known = set(ctx.consts) | {v["name"] for v in graph["inputs"]} | {""}
    plan = []
    for node in _nodes(graph, ctx):
        builder = _OPS.get(node.op)
        if builder is None:
            raise BundleError(f"{ctx.path}: unknown op {node.op!r} at {node.label()}: the numpy backend "
                              f"supports {', '.join(sorted(_OPS))}; use the onnxruntime backend or change the model")
        missing = [n for n in node.inputs if n not in known]
        if missing:
            raise BundleError(f"{ctx.path}: {node.label()} reads {missing[0]!r}, which no earlier node produces")
        try:
            step = builder(node, ctx)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError, OverflowError) as e:
            raise BundleError(f"{ctx.path}: {node.label()}: invalid node ({type(e).__name__}: {e})") from None
        known.update(node.outputs)
        if step is not None and all(n in ctx.consts for n in node.inputs if n):
            step(ctx.consts)  # constant folding: the outputs become constants
        elif step is not None:
            plan.append(_Entry(node, step, _reads(node, ctx, step), list(node.outputs)))
    return _fuse_quantize(_fuse_relu(plan, ctx), ctx)


def _fuse_relu(plan: list[_Entry], ctx: _Ctx) -> list[_Entry]:
    """Fold each Relu into the float Conv that alone feeds it (the epilogue clamps in place)."""
    producers = {name: e for e in plan for name in e.writes}
    kept = []
    for e in plan:
        src = e.node.input(0)
        p = producers.get(src) if e.node.op == "Relu" else None
        if p is not None and isinstance(p.step, (_Conv, _Depthwise)) and getattr(p.step, "zero", None) is None \
                and len(ctx.readers[src]) == 1 and src not in ctx.outputs:
            p.step.epilogue.relu = True
            p.step.dst, p.writes = e.node.outputs[0], [e.node.outputs[0]]
        else:
            kept.append(e)
    return kept


def _reads(node: _Node, ctx: _Ctx, step: Step) -> set[str]:
    """Tensor names a step reads (fused steps read the quantized source, not the DequantizeLinear)."""
    reads = set(node.inputs)
    src = getattr(step, "src", None)  # set by _Conv and _Dense
    if src is not None and node.input(0) in ctx.qacts and src == ctx.qacts[node.input(0)].source:
        reads = (reads - {node.input(0)}) | {src}
    return reads


def _fuse_quantize(plan: list[_Entry], ctx: _Ctx) -> list[_Entry]:
    """Fold each centered QuantizeLinear into the Conv/Gemm/MatMul step that alone feeds it."""
    producers = {name: e for e in plan for name in e.writes}
    kept = []
    for e in plan:
        q = e.step
        p = producers.get(q.src) if isinstance(q, _Quantize) and q.centered else None
        if p is not None and _fusable(p.step) and len(ctx.readers[q.src]) == 1 and q.src not in ctx.outputs:
            p.step.epilogue.fuse(q)
            p.step.dst, p.writes = q.dst, [q.dst]
        else:
            kept.append(e)
    return kept


def _fusable(step: Step) -> bool:
    return isinstance(step, _Conv) or (isinstance(step, _Dense) and not step.bias)


def _prune(plan: list[_Entry], outputs: list[str]) -> list[tuple[_Node, Step]]:
    """Drop steps whose outputs no later step or graph output reads."""
    needed, kept = set(outputs), []
    for e in reversed(plan):
        if needed & set(e.writes):
            needed |= e.reads
            kept.append((e.node, e.step))
    return kept[::-1]


class NumpyInterpreter:
    """Runs a model.npz. `run({input: array}) -> {graph output name: float32 copy}`."""

    def __init__(self, npz_path: str | Path) -> None:
        self.path = Path(npz_path)
        graph, inits = _read_npz(self.path)
        self.inputs = {v["name"]: tuple(v["shape"]) for v in graph["inputs"]}
        self.output_names = list(graph["outputs"])
        ctx = _Ctx(self.path, dict(inits), set(self.output_names))
        plan = _plan(graph, ctx)
        produced = set(ctx.consts) | set(self.inputs) | {o for e in plan for o in e.writes}
        lost = [o for o in self.output_names if o not in produced]
        if lost:
            raise BundleError(f"{self.path}: graph output {lost[0]!r} is never produced: re-export the model")
        self._steps = _prune(plan, self.output_names)
        self._env: Env = dict(ctx.consts)

    def _feed(self, feeds: dict[str, np.ndarray]) -> None:
        for name, shape in self.inputs.items():
            if name not in feeds:
                raise BundleError(f"{self.path}: input {name!r} missing (got {sorted(feeds)}): pass it by name")
            x = np.asarray(feeds[name], dtype=np.float32)
            if x.ndim != len(shape) or any(e not in (-1, g) for e, g in zip(shape, x.shape)):
                raise BundleError(f"{self.path}: input {name!r} expects shape {list(shape)} (-1: any), "
                                  f"got {list(x.shape)}: resize the input to the bundle's input spec")
            self._env[name] = x

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._feed(feeds)
        node = None
        try:
            for node, step in self._steps:
                step(self._env)
        except (ValueError, IndexError, TypeError, KeyError, ZeroDivisionError, OverflowError, MemoryError) as e:
            shapes = {k: list(np.shape(v)) for k, v in feeds.items()}
            raise BundleError(f"{self.path}: {node.label()} failed on input shapes {shapes} "
                              f"({type(e).__name__}: {e}): check the input against the bundle's spec") from None
        return {name: np.array(self._env[name], dtype=np.float32) for name in self.output_names}


class _BlasThreads:
    """The size of numpy's OpenBLAS thread pool (process-wide), through ctypes.

    `limit(n)` sets it and returns the previous size, for the caller to restore. Where numpy's
    BLAS is not an OpenBLAS found among the loaded libraries (e.g. Accelerate on macOS), it
    does nothing and returns None."""

    _SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                "openblas_set_num_threads64_", "openblas_set_num_threads")

    def __init__(self) -> None:
        self._get = self._set = None
        lib = _openblas()
        name = next((s for s in self._SETTERS if lib is not None and hasattr(lib, s)), None)
        if name is not None and hasattr(lib, name.replace("_set_", "_get_")):
            self._set, self._get = getattr(lib, name), getattr(lib, name.replace("_set_", "_get_"))
            self._set.argtypes, self._set.restype, self._get.restype = [ctypes.c_int], None, ctypes.c_int

    def limit(self, n: int | None) -> int | None:
        if self._set is None or n is None:
            return None
        previous = self._get()
        if previous != n:
            self._set(n)
        return previous


def _openblas() -> ctypes.CDLL | None:
    """The OpenBLAS library numpy loaded (Linux: /proc/self/maps; wheels: numpy.libs), or None."""
    maps = Path("/proc/self/maps")
    mapped = [line.split(None, 5)[-1].strip() for line in maps.read_text().splitlines()] if maps.exists() else []
    bundled = [str(p) for p in (Path(np.__file__).parent.parent / "numpy.libs").glob("*openblas*")]
    for path in dict.fromkeys(p for p in mapped + bundled if "openblas" in Path(p).name.lower()):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


class NumpySession:
    """Backend session: inputs by name, outputs by role (bundle.outputs). Each run uses `threads`
    BLAS threads (None: numpy's default) and puts the process's setting back afterwards."""

    name = NAME

    def __init__(self, bundle: Bundle, threads: int | None = 1) -> None:
        self.interpreter = NumpyInterpreter(bundle.payload("npz"))
        self.threads = threads
        self._blas = _BlasThreads()
        self._roles = dict(bundle.outputs)
        missing = [g for g in self._roles.values() if g not in self.interpreter.output_names]
        if missing:
            raise BundleError(f"{self.interpreter.path}: manifest output {missing[0]!r} is not a graph output "
                              f"({self.interpreter.output_names}): re-export the bundle")

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        previous = self._blas.limit(self.threads)
        try:
            out = self.interpreter.run(inputs)
        finally:
            self._blas.limit(previous)
        return {role: out[graph_name] for role, graph_name in self._roles.items()}


def load(bundle: Bundle, threads: int | None = 1) -> NumpySession:
    """Open the bundle's model.npz; runs use `threads` BLAS threads (None: leave numpy's setting)."""
    return NumpySession(bundle, threads)
