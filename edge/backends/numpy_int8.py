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

Every step keeps its activation buffers: after the first run with a given input shape,
runs reuse them (out= everywhere numpy allows, conv as im2col into a kept buffer + matmul
out=), so memory stays flat over any number of runs. Buffers are per step and never shared.
"""
from __future__ import annotations

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
    zero: float
    max_abs: float


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
    qacts: dict[str, _QAct] = field(default_factory=dict)
    qweights: dict[str, _QWeight] = field(default_factory=dict)

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
    return np.clip(y, 0.0, 1.0, out=y)


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
        env[dst] = np.clip(x, lo, hi, out=_buf(bufs, "y", x.shape, x.dtype))
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

def _op_quantize(node: _Node, ctx: _Ctx) -> Step:
    src, dst, bufs = node.input(0), node.outputs[0], {}
    scale = ctx.const(node.input(1), node).astype(np.float32)
    zero = ctx.const(node.input(2), node) if node.input(2) else np.zeros((), np.uint8)
    info, axis = np.iinfo(zero.dtype), node.attrs.get("axis", 1)

    def step(env: Env) -> None:
        x = env[src]
        f = _buf(bufs, "f", x.shape)
        np.divide(x, _along(scale, axis, x.ndim), out=f)
        np.rint(f, out=f)  # round half to even, as ONNX
        np.add(f, _along(zero, axis, x.ndim), out=f)
        np.clip(f, info.min, info.max, out=f)
        q = _buf(bufs, "q", x.shape, zero.dtype)
        np.copyto(q, f, casting="unsafe")
        env[dst] = q
    return step


def _dq_parts(node: _Node, ctx: _Ctx) -> tuple[np.ndarray, np.ndarray, int]:
    scale = ctx.const(node.input(1), node).astype(np.float32)
    zero = ctx.const(node.input(2), node) if node.input(2) else np.zeros((), np.int32)
    return scale, zero, node.attrs.get("axis", 1)


def _dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int, out: np.ndarray) -> np.ndarray:
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
    if scale.size == 1 and zero.size == 1:
        info = np.iinfo(zero.dtype)
        z = float(zero.reshape(()))
        ctx.qacts[dst] = _QAct(src, float(scale.reshape(())), z, max(z - info.min, info.max - z))
    bufs: dict = {}

    def step(env: Env) -> None:
        q = env[src]
        env[dst] = _dequantize(q, scale, zero, axis, _buf(bufs, "y", q.shape))
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


@dataclass
class _Conv:
    src: str
    dst: str
    window: _Window
    weights: np.ndarray  # [group, M / group, C / group * prod(kernel)], compute dtype
    zero: float | None  # input zero point on the integer path, None on the float path
    mult: np.ndarray | None  # [M, 1...] scales applied after the integer product
    bias: np.ndarray | None  # [M, 1...] float32
    bufs: dict = field(default_factory=dict)

    def __call__(self, env: Env) -> None:
        x, b, w = env[self.src], self.bufs, self.weights
        padded, inner = _pad_into(b, x, self.window.pads, 0.0, w.dtype)
        if self.zero:
            np.subtract(inner, self.zero, out=inner)
        cols, out_sp = self._im2col(padded)
        n, g = x.shape[0], w.shape[0]
        acc = _buf(b, "acc", (n, g, w.shape[1], math.prod(out_sp)), w.dtype)
        np.matmul(w, cols.reshape(n, g, w.shape[2], -1), out=acc)
        env[self.dst] = _epilogue(b, acc.reshape((n, g * w.shape[1]) + out_sp), self.mult, self.bias)

    def _im2col(self, padded: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        """Columns [N, C, *kernel, *out] in a kept buffer; a 1x1 stride-1 conv uses the input as is."""
        win = self.window
        if all(v == 1 for v in win.kernel + win.strides) and not any(win.pads):
            return padded, padded.shape[2:]
        view = win.view(padded)
        cols = _buf(self.bufs, "cols", view.shape, self.weights.dtype)
        np.copyto(cols, view)
        return cols, view.shape[2 + len(win.kernel):]


def _epilogue(bufs: dict, acc: np.ndarray, mult: np.ndarray | None, bias: np.ndarray | None) -> np.ndarray:
    """acc * mult + bias, as float32 (acc is float32 or float64)."""
    y = acc if acc.dtype == np.float32 else _buf(bufs, "y", acc.shape)
    if mult is not None:
        np.multiply(acc, mult, out=y, casting="unsafe")
    elif y is not acc:
        np.copyto(y, acc, casting="unsafe")
    if bias is not None:
        np.add(y, bias, out=y)
    return y


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
        mat = w.reshape(group, w.shape[0] // group, -1).astype(np.float32)
        return _Conv(x, node.outputs[0], window, mat, None, None, bias)
    wi = (qw.q.astype(np.float64) - _along(qw.zero, 0, w.ndim)).reshape(w.shape[0], -1)
    dtype = _int_dtype(wi, qa.max_abs, 1)
    mat = wi.reshape(group, w.shape[0] // group, -1).astype(dtype)
    mult = (np.float32(qa.scale) * qw.scale.reshape(-1)).astype(np.float32).reshape(shape_m)
    return _Conv(qa.source, node.outputs[0], window, mat, qa.zero, mult, bias)


@dataclass
class _Dense:
    src: str
    b: str  # weight name (read from env: constants live there too)
    dst: str
    trans_a: bool
    weights: np.ndarray | None  # [K, N] integer path weights, else None (float path)
    zero: float | None
    mult: np.ndarray | float | None
    bias: str  # name of C ("" if none)
    beta: float
    bufs: dict = field(default_factory=dict)

    def __call__(self, env: Env) -> None:
        a = env[self.src]
        a = a.swapaxes(-1, -2) if self.trans_a else a
        if self.weights is not None:
            xf = _buf(self.bufs, "x", a.shape, self.weights.dtype)
            np.subtract(a, self.zero, out=xf, dtype=xf.dtype)
            a, w = xf, self.weights
        else:
            w = env[self.b]
        shape = np.broadcast_shapes(a.shape[:-2], w.shape[:-2]) + (a.shape[-2], w.shape[-1])
        acc = np.matmul(a, w, out=_buf(self.bufs, "acc", shape, a.dtype))
        bias = env[self.bias] if self.bias else None
        if bias is not None and self.beta != 1.0:
            bias = np.multiply(bias, self.beta, out=_buf(self.bufs, "c", bias.shape))
        env[self.dst] = _epilogue(self.bufs, acc, self.mult, bias)


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
    if qa is None or qw is None or qw.q.ndim != 2 or (qw.scale.size > 1 and qw.axis % 2 != n_axis):
        if trans_b:  # float path with a transposed constant weight: transpose it once
            w_name = _transposed_const(ctx, w_name, node)
        mult = None if alpha == 1.0 else np.float32(alpha)
        return _Dense(x, w_name, dst, trans_a, None, None, mult, bias, beta)
    wi = qw.q.astype(np.float64) - _along(qw.zero, n_axis, 2)
    wi = wi.T if trans_b else wi
    mult = (np.float32(qa.scale * alpha) * qw.scale.reshape(-1)).astype(np.float32)
    w = wi.astype(_int_dtype(wi, qa.max_abs, 0))
    return _Dense(qa.source, w_name, dst, trans_a, w, qa.zero, mult, bias, beta)


def _transposed_const(ctx: _Ctx, name: str, node: _Node) -> str:
    key = f"{name}#T"
    ctx.consts[key] = np.ascontiguousarray(ctx.const(name, node).T)
    return key


def _op_pool(reduce: Callable, fill: float) -> Callable[[_Node, _Ctx], Step]:
    def build(node: _Node, ctx: _Ctx) -> Step:
        window = _Window.from_attrs(node.attrs, node.attrs["kernel_shape"], node, ctx)
        exclude_pad = reduce is np.mean and any(window.pads) and not node.attrs.get("count_include_pad", 0)
        src, dst, bufs = node.input(0), node.outputs[0], {}

        def step(env: Env) -> None:
            x = env[src]
            padded, _ = _pad_into(bufs, x, window.pads, fill, np.float32)
            view = window.view(padded)
            k_axes = tuple(range(2, 2 + len(window.kernel)))
            y = reduce(view, axis=k_axes, out=_buf(bufs, "y", x.shape[:2] + view.shape[2 + len(k_axes):]))
            if exclude_pad:
                np.multiply(y, _pad_counts(bufs, x.shape, window), out=y)
            env[dst] = y
        return step
    return build


def _pad_counts(bufs: dict, shape: tuple, window: _Window) -> np.ndarray:
    """prod(kernel) / (valid taps per output): rescales a padded mean to exclude the pads."""
    key = f"counts{shape}"
    if key not in bufs:
        ones, _ = _pad_into({}, np.ones((1, 1) + shape[2:], np.float32), window.pads, 0.0, np.float32)
        view = window.view(ones)
        valid = view.sum(axis=tuple(range(2, 2 + len(window.kernel))))
        bufs[key] = (np.prod(window.kernel) / valid).astype(np.float32)
    return bufs[key]


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
    "AveragePool": _op_pool(np.mean, 0.0), "MaxPool": _op_pool(np.max, -np.inf),
    "ReduceMean": _op_reduce(np.mean), "ReduceSum": _op_reduce(np.sum),
    "Reshape": _op_reshape, "Flatten": _op_flatten, "Squeeze": _axes_op(_squeeze),
    "Unsqueeze": _axes_op(_unsqueeze), "Transpose": _op_transpose, "Concat": _op_concat,
    "Slice": _op_slice, "Pad": _op_pad, "Identity": _op_identity, "Shape": _op_shape, "Gather": _op_gather,
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


def _plan(graph: dict, ctx: _Ctx) -> list[tuple[_Node, Step, set[str]]]:
    known = set(ctx.consts) | {v["name"] for v in graph["inputs"]} | {""}
    plan = []
    for i, raw in enumerate(graph["nodes"]):
        node = _Node(i, raw["op"], str(raw.get("name", "")), raw["inputs"], raw["outputs"], raw.get("attrs", {}))
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
            plan.append((node, step, _reads(node, ctx, step)))
    return plan


def _reads(node: _Node, ctx: _Ctx, step: Step) -> set[str]:
    """Tensor names a step reads (fused steps read the quantized source, not the DequantizeLinear)."""
    reads = set(node.inputs)
    src = getattr(step, "src", None)  # set by _Conv and _Dense
    if src is not None and node.input(0) in ctx.qacts and src == ctx.qacts[node.input(0)].source:
        reads = (reads - {node.input(0)}) | {src}
    return reads


def _prune(plan: list, outputs: list[str]) -> list[tuple[_Node, Step]]:
    """Drop steps whose outputs no later step or graph output reads."""
    needed, kept = set(outputs), []
    for node, step, reads in reversed(plan):
        if needed & set(node.outputs):
            needed |= reads
            kept.append((node, step))
    return kept[::-1]


class NumpyInterpreter:
    """Runs a model.npz. `run({input: array}) -> {graph output name: float32 copy}`."""

    def __init__(self, npz_path: str | Path) -> None:
        self.path = Path(npz_path)
        graph, inits = _read_npz(self.path)
        ctx = _Ctx(self.path, dict(inits))
        self.inputs = {v["name"]: tuple(v["shape"]) for v in graph["inputs"]}
        self.output_names = list(graph["outputs"])
        plan = _plan(graph, ctx)
        produced = set(ctx.consts) | set(self.inputs) | {o for node, _, _ in plan for o in node.outputs}
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


class NumpySession:
    """Backend session: inputs by name, outputs by role (bundle.outputs)."""

    name = NAME

    def __init__(self, bundle: Bundle) -> None:
        self.interpreter = NumpyInterpreter(bundle.payload("npz"))
        self._roles = dict(bundle.outputs)
        missing = [g for g in self._roles.values() if g not in self.interpreter.output_names]
        if missing:
            raise BundleError(f"{self.interpreter.path}: manifest output {missing[0]!r} is not a graph output "
                              f"({self.interpreter.output_names}): re-export the bundle")

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.interpreter.run(inputs)
        return {role: out[graph_name] for role, graph_name in self._roles.items()}


def load(bundle: Bundle, threads: int = 1) -> NumpySession:
    """Open the bundle's model.npz; `threads` is ignored (numpy's BLAS decides)."""
    return NumpySession(bundle)
