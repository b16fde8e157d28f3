"""Op kernels of the numpy backend: one builder per ONNX op; `OPS` maps op type -> builder.

In:  a graph node (`Node`) and the load-time context (`Ctx`: constants, readers, quantization
     facts). Out: a `Step`, a callable that reads its inputs from the run's tensor dict (`Env`)
     and writes its outputs there, or None when the node folded into constants at load.
Steps take every buffer they write (outputs and scratch) from their interpreter's `Arena`
through `Buffers.take`: the first run with a given input shape allocates them one by one and
records when each is born and when it dies; then the arena packs them into one block, two
buffers sharing bytes only when their lifetimes do not overlap, and later runs get the same
views of that block, allocating nothing. Each output array is overwritten by the next run (the
interpreter copies graph outputs for the caller); a buffer's content is undefined when a step
takes it (padding borders are refilled on every run).

The op set is what the shipped bundles use (students edge/models/audio and face, detector
edge/models/face_detector), plus ReduceMax (the audio recipe's mean+max pooling), and
AveragePool, Squeeze and Identity, which the student exports may emit. The arithmetic
(integer Conv/Gemm/MatMul, requantization, pooling) is described in numpy_int8.py, which
plans the graph and runs it.
"""
from __future__ import annotations

import itertools
import math
import mmap
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import as_strided

from edge.errors import BundleError

Env = dict[str, np.ndarray]
Step = Callable[[Env], None]
_EXACT_LIMIT = float(2**24)
_ONNX_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 9: np.bool_, 11: np.float64}


@dataclass
class Node:
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
    zero: float  # still to subtract from the source: 0 when the source is centered (QuantizeStep)
    max_abs: float  # the largest |q - zero|


@dataclass
class _QWeight:
    """A folded DequantizeLinear of an integer constant."""

    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    axis: int


@dataclass
class Ctx:
    path: Path
    consts: Env
    outputs: set[str]
    readers: dict[str, list[Node]] = field(default_factory=dict)  # tensor name -> nodes reading it
    qacts: dict[str, _QAct] = field(default_factory=dict)
    qweights: dict[str, _QWeight] = field(default_factory=dict)
    centered: set[str] = field(default_factory=set)  # outputs of centered QuantizeLinear steps
    arena: "Arena" = field(default_factory=lambda: Arena())

    def buffers(self) -> "Buffers":
        """A new step's buffers, from this graph's arena."""
        return Buffers(self.arena)

    def const(self, name: str, node: Node) -> np.ndarray:
        if name not in self.consts:
            raise BundleError(f"{self.path}: {node.label()} needs input {name!r} to be a constant; "
                              f"re-export the model")
        return self.consts[name]


ALIGN = 64
"""Byte alignment of every buffer in an arena block (cache line; any dtype's itemsize)."""
MAP_MIN = 1 << 16
"""Bytes from which `mapped` gives a buffer its own anonymous memory map."""


def mapped(shape: tuple, dtype=np.uint8) -> np.ndarray:
    """np.empty, except that a buffer of MAP_MIN bytes or more is its own anonymous memory map,
    unmapped (given back to the system) when its last view dies. glibc's malloc keeps freed
    large blocks in its heap once its mmap threshold has risen, and a recording run frees many:
    with malloc they stayed resident (~2 MB per recorded graph)."""
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    if count * dtype.itemsize < MAP_MIN:
        return np.empty(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, count * dtype.itemsize), dtype, count=count).reshape(shape)


class Buffers:
    """One step's buffers by tag: `take(tag, shape, dtype)` gives the arena's view when the
    arena has planned one of that shape and dtype, else a fresh array (which the arena records
    while it records, and which makes it re-plan at the next run otherwise)."""

    __slots__ = ("arena", "views")

    def __init__(self, arena: "Arena") -> None:
        self.arena, self.views = arena, {}
        arena.owners.append(self)

    def take(self, tag: str, shape: tuple, dtype=np.float32) -> np.ndarray:
        v = self.views.get(tag)
        if v is not None and v.shape == shape and v.dtype == dtype:
            return v
        return self.arena.fresh(self, tag, shape, dtype)


@dataclass
class _Life:
    """A recorded buffer: who took it, its bytes, the steps it is alive in."""

    owner: Buffers
    tag: str
    shape: tuple
    dtype: np.dtype
    nbytes: int
    birth: int
    death: int
    offset: int = 0
    address: int = 0  # of its memory during the recording run


class SharedBlock:
    """The one block of bytes every arena in the process lays its buffers out in.

    Graphs run one at a time (`lock`, held by the interpreter for a whole run, output copies
    included), so the process needs the largest graph's arena, not the sum of all of them: the
    pipeline's detector, face and audio students share one. `take(size)` grows the block when
    an arena needs more; arenas laid out in an older one move to the new one at their next run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.array = np.empty(0, np.uint8)
        self.generation = 0

    def take(self, size: int) -> np.ndarray:
        if size > self.array.nbytes:
            self.array = np.empty(0, np.uint8)  # the old block goes with the last view into it
            self.array = mapped((size,))
            self.generation += 1
        return self.array


BLOCK = SharedBlock()


class Arena:
    """Every buffer of one graph's steps, laid out by lifetime in the shared block.

    The interpreter calls `prepare(signature)` before every run (True: these input shapes are
    new, record this run), then while recording `step_done` after each step (the step's
    outputs, their last reader) and `plan()` after the run:
    greedy by size (the largest buffer first, at the lowest offset where it overlaps no placed
    buffer alive at the same time), as TFLite's GreedyMemoryPlanner. Buffers alive at once never
    share bytes, so views handed out by one run stay valid for the steps that read them.
    `bind()` (re)makes the views when the shared block was replaced by a larger one."""

    def __init__(self, block: SharedBlock = BLOCK) -> None:
        self.owners: list[Buffers] = []
        self.shared = block
        self.signature: tuple | None = None
        self.stale = False
        self.recording = False
        self.size = 0
        self._generation = -1
        self._lives: list[_Life] = []
        self._alive: list[_Life] = []  # recorded buffers some later step still reads
        self._in_block: list[_Life] = []  # the alive ones that the recording run put in the shared block
        self._step = 0

    def fresh(self, owner: Buffers, tag: str, shape: tuple, dtype) -> np.ndarray:
        if not self.recording:
            if self.signature is not None:
                self.stale = True  # a buffer the plan does not hold: record again next run
            return mapped(shape, dtype)
        dtype = np.dtype(dtype)
        life = _Life(owner, tag, tuple(shape), dtype, math.prod(shape) * dtype.itemsize, self._step, self._step)
        a = self._recording_buffer(life)
        life.address = a.ctypes.data
        self._lives.append(life)
        self._alive.append(life)
        return a

    def _recording_buffer(self, life: _Life) -> np.ndarray:
        """While recording: the lowest free gap of the shared block (graphs run one at a time,
        so all of it is this run's), else a buffer of its own."""
        self._in_block = [x for x in self._in_block if x.death >= self._step]
        offset, block = _lowest_gap(life, self._in_block), self.shared.array
        if offset + life.nbytes > block.nbytes:
            return mapped(life.shape, life.dtype)
        life.offset = offset
        self._in_block.append(life)
        return block[offset:offset + life.nbytes].view(life.dtype).reshape(life.shape)

    def prepare(self, signature: tuple) -> bool:
        """Before a run: start recording (True) for new input shapes, else make sure the views
        are in the current shared block."""
        if self.stale or signature != self.signature:
            for owner in self.owners:
                owner.views.clear()
            self.signature, self.stale, self.recording = signature, False, True
            self._lives, self._alive, self._in_block, self._step = [], [], [], 0
            return True
        if self._generation != self.shared.generation:
            self.bind()
        return False

    def step_done(self, step: int, outputs: list[tuple[np.ndarray, int]]) -> None:
        """After step `step`: each (output array, index of its last reader) extends the life of
        the buffer the output lives in; buffers the step took that no output lives in die now."""
        for array, last in outputs:
            life = self._holding(array)
            if life is not None:
                life.death = max(life.death, last)
        self._alive = [x for x in self._alive if x.death > step]
        self._step = step + 1

    def _holding(self, array: np.ndarray) -> _Life | None:
        """The alive recorded buffer whose memory `array` (a view of it, maybe) starts in."""
        if array.nbytes == 0:
            return None
        start = array.ctypes.data
        return next((x for x in self._alive if x.address <= start < x.address + x.nbytes), None)

    def plan(self) -> None:
        """Lay the recorded buffers out (offsets) and bind them to the shared block."""
        placed: list[_Life] = []
        for life in sorted(self._lives, key=lambda x: -x.nbytes):
            life.offset = _lowest_gap(life, placed)
            placed.append(life)
        self.size = max((x.offset + x.nbytes for x in placed), default=0)
        self.recording, self._alive, self._in_block = False, [], []
        self.bind()

    def bind(self) -> None:
        """Hand every owner its views of the shared block."""
        block = self.shared.take(self.size)
        for x in self._lives:
            x.owner.views[x.tag] = block[x.offset:x.offset + x.nbytes].view(x.dtype).reshape(x.shape)
        self._generation = self.shared.generation


def _lowest_gap(life: _Life, placed: list[_Life]) -> int:
    """The lowest ALIGN-aligned offset where `life` overlaps no placed buffer alive at the same time."""
    busy = sorted((p.offset, p.offset + p.nbytes) for p in placed
                  if p.birth <= life.death and life.birth <= p.death)
    offset = 0
    for lo, hi in busy:
        if offset + life.nbytes <= lo:
            break
        offset = max(offset, -(-hi // ALIGN) * ALIGN)
    return offset


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

def _unary(fn: Callable) -> Callable[[Node, Ctx], Step]:
    def build(node: Node, ctx: Ctx) -> Step:
        src, dst, bufs = node.input(0), node.outputs[0], ctx.buffers()

        def step(env: Env) -> None:
            x = env[src]
            env[dst] = fn(x, bufs.take("y", x.shape, x.dtype), node.attrs)
        return step
    return build


def _binary(fn: Callable) -> Callable[[Node, Ctx], Step]:
    def build(node: Node, ctx: Ctx) -> Step:
        a_name, b_name, dst, bufs = node.input(0), node.input(1), node.outputs[0], ctx.buffers()

        def step(env: Env) -> None:
            a, b = env[a_name], env[b_name]
            out = bufs.take("y", np.broadcast_shapes(a.shape, b.shape), np.result_type(a, b))
            env[dst] = fn(a, b, out=out)
        return step
    return build


def _div(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    return (np.floor_divide if out.dtype.kind in "iu" else np.divide)(a, b, out=out)


def _sigmoid(x: np.ndarray, y: np.ndarray, attrs: dict) -> np.ndarray:
    np.multiply(x, 0.5, out=y)  # 1 / (1 + e^-x) == (1 + tanh(x / 2)) / 2, without overflow
    np.tanh(y, out=y)
    np.multiply(y, 0.5, out=y)
    return np.add(y, 0.5, out=y)


def _op_clip(node: Node, ctx: Ctx) -> Step:
    src, lo_name, hi_name, dst, bufs = node.input(0), node.input(1), node.input(2), node.outputs[0], ctx.buffers()
    lo_attr, hi_attr = node.attrs.get("min", -np.inf), node.attrs.get("max", np.inf)

    def step(env: Env) -> None:
        x = env[src]
        lo = env[lo_name] if lo_name else lo_attr
        hi = env[hi_name] if hi_name else hi_attr
        env[dst] = _clip(x, lo, hi, bufs.take("y", x.shape, x.dtype))
    return step


def _op_cast(node: Node, ctx: Ctx) -> Step:
    src, dst, bufs = node.input(0), node.outputs[0], ctx.buffers()
    dtype = _ONNX_DTYPES[node.attrs["to"]]

    def step(env: Env) -> None:
        x = env[src]
        y = bufs.take("y", x.shape, dtype)
        np.copyto(y, x, casting="unsafe")
        env[dst] = y
    return step


# ---------------------------------------------------------------- quantization

@dataclass
class QuantizeStep:
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
    bufs: Buffers

    def __call__(self, env: Env) -> None:
        x = env[self.src]
        f = self.bufs.take("f", x.shape)
        np.divide(x, _along(self.scale, self.axis, x.ndim), out=f)
        np.rint(f, out=f)  # round half to even, as ONNX
        _clip(f, _along(self.lo, self.axis, x.ndim), _along(self.hi, self.axis, x.ndim), f)
        if self.centered:
            env[self.dst] = f
            return
        q = self.bufs.take("q", x.shape, self.zero.dtype)
        env[self.dst] = np.add(f, _along(self.zero, self.axis, x.ndim), out=q, casting="unsafe")


def _op_quantize(node: Node, ctx: Ctx) -> QuantizeStep:
    scale = ctx.const(node.input(1), node).astype(np.float32)
    zero = ctx.const(node.input(2), node) if node.input(2) else np.zeros((), np.uint8)
    info = np.iinfo(zero.dtype)
    centered = _centered(node, scale, zero, ctx)
    if centered:
        ctx.centered.add(node.outputs[0])
    lo, hi = (np.float32(bound) - zero.astype(np.float32) for bound in (info.min, info.max))
    return QuantizeStep(node.input(0), node.outputs[0], scale, zero, node.attrs.get("axis", 1), lo, hi, centered,
                        ctx.buffers())


def _centered(node: Node, scale: np.ndarray, zero: np.ndarray, ctx: Ctx) -> bool:
    """Whether a per-tensor QuantizeLinear may keep q - zero: it feeds only DequantizeLinears with
    the same scale and zero point, and neither its input nor its output is a constant or graph output."""
    dst = node.outputs[0]
    if scale.size != 1 or zero.size != 1 or dst in ctx.outputs or node.input(0) in ctx.consts:
        return False
    readers = ctx.readers.get(dst, [])
    return bool(readers) and all(r.op == "DequantizeLinear" and r.input(0) == dst and r.inputs.count(dst) == 1
                                 and _same_params(r, scale, zero, ctx) for r in readers)


def _same_params(dq: Node, scale: np.ndarray, zero: np.ndarray, ctx: Ctx) -> bool:
    s = ctx.consts.get(dq.input(1))
    z = ctx.consts.get(dq.input(2)) if dq.input(2) else np.zeros((), zero.dtype)
    return (s is not None and z is not None and s.size == 1 and z.size == 1 and z.dtype == zero.dtype
            and np.float32(s.reshape(())) == scale.reshape(()) and z.reshape(()) == zero.reshape(()))


def _dq_parts(node: Node, ctx: Ctx) -> tuple[np.ndarray, np.ndarray, int]:
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


def _op_dequantize(node: Node, ctx: Ctx) -> Step | None:
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
    bufs = ctx.buffers()

    def step(env: Env) -> None:
        q = env[src]
        env[dst] = _dequantize(q, scale, zero_or_none, axis, bufs.take("y", q.shape))
    return step


# ---------------------------------------------------------------- conv, pooling, dense

def _pad_into(bufs: Buffers, x: np.ndarray, pads: list[int], fill: float, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Copy x (cast to dtype) into a padded buffer whose border is set to `fill`; returns (padded, interior)."""
    nd = x.ndim - 2
    shape = x.shape[:2] + tuple(s + pads[i] + pads[i + nd] for i, s in enumerate(x.shape[2:]))
    padded = bufs.take("pad", shape, dtype)
    for i in range(nd):  # the arena lends the buffer to other steps between runs: refill the border
        lead = (slice(None),) * (2 + i)
        if pads[i]:
            padded[lead + (slice(0, pads[i]),)] = fill
        if pads[i + nd]:
            padded[lead + (slice(shape[2 + i] - pads[i + nd], None),)] = fill
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
    def from_attrs(cls, attrs: dict, kernel: list[int], node: Node, ctx: Ctx) -> "_Window":
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

    def __call__(self, bufs: Buffers, acc: np.ndarray) -> np.ndarray:
        y = acc if acc.dtype == np.float32 else bufs.take("y", acc.shape)
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

    def fuse(self, quantize: QuantizeStep) -> None:
        inv = 1.0 / np.float64(quantize.scale.reshape(()))
        self.mult = np.float32(inv) if self.mult is None else (self.mult.astype(np.float64) * inv).astype(np.float32)
        self.bias = None if self.bias is None else (self.bias.astype(np.float64) * inv).astype(np.float32)
        self.clip = (float(quantize.lo.reshape(())), float(quantize.hi.reshape(())))


@dataclass
class _ConvShapes:
    """A Conv's geometry for one input shape, worked out on the first run with that shape."""

    key: tuple
    as_is: bool  # x is the matmul operand as it is (a 1x1 stride-1 conv on a float32 C-contiguous input)
    im2col: bool  # False for a 1x1 stride-1 conv
    cols: tuple  # im2col buffer shape
    operand: tuple  # the matmul operand's shape [N, group, K, positions]
    acc: tuple  # [N, group, M / group, positions]
    out_shape: tuple  # [N, M, *out]


@dataclass
class ConvStep:
    src: str
    dst: str
    window: _Window
    weights: np.ndarray  # [group, M / group, C / group * prod(kernel)], compute dtype
    zero: float | None  # input zero point still to subtract on the integer path, None on the float path
    epilogue: _Epilogue
    bufs: Buffers
    shapes: _ConvShapes | None = None
    _view: tuple = (None, None)  # (padded buffer, its window view): remade when the buffer changes

    def __call__(self, env: Env) -> None:
        x = env[self.src]
        g = self._shapes(x)
        operand = x
        if not g.as_is:
            operand, inner = _pad_into(self.bufs, x, self.window.pads, 0.0, self.weights.dtype)
            if self.zero:
                np.subtract(inner, self.zero, out=inner)
        if g.im2col:
            cols = self.bufs.take("cols", g.cols, self.weights.dtype)
            np.copyto(cols, self._window_view(operand))
            operand = cols
        acc = self.bufs.take("acc", g.acc, self.weights.dtype)
        np.matmul(self.weights, operand.reshape(g.operand), out=acc)
        env[self.dst] = self.epilogue(self.bufs, acc.reshape(g.out_shape))

    def _window_view(self, padded: np.ndarray) -> np.ndarray:
        """The window view of `padded`, kept while it is the same arena buffer (never a recorded
        run's buffer: that one is freed after the run)."""
        if self.bufs.arena.recording:
            self._view = (None, None)
            return self.window.view(padded)
        if self._view[0] is not padded:
            self._view = (padded, self.window.view(padded))
        return self._view[1]

    def _shapes(self, x: np.ndarray) -> _ConvShapes:
        key = (x.shape, x.dtype, x.flags.c_contiguous)
        if self.shapes is None or self.shapes.key != key:
            self.shapes = self._make_shapes(x, key)
        return self.shapes

    def _make_shapes(self, x: np.ndarray, key: tuple) -> _ConvShapes:
        win, w = self.window, self.weights
        pointwise = all(v == 1 for v in win.kernel + win.strides)
        as_is = pointwise and not any(win.pads) and not self.zero and x.dtype == w.dtype and x.flags.c_contiguous
        nd = x.ndim - 2
        padded = x.shape[2:] if as_is else tuple(s + win.pads[i] + win.pads[i + nd] for i, s in enumerate(x.shape[2:]))
        out = win.out_shape(padded)
        n, g = x.shape[0], w.shape[0]
        cols = x.shape[:2] + tuple(win.kernel) + out
        return _ConvShapes(key, as_is, not pointwise, cols, (n, g, w.shape[2], -1),
                           (n, g, w.shape[1], math.prod(out)), (n, g * w.shape[1]) + out)


TAP_BYTES = 1 << 18
"""Largest tap product a depthwise step holds: it sums its taps over this many bytes of channels at a time."""


@dataclass
class DepthwiseStep:
    """A float depthwise Conv (one input channel per output channel) as a weighted sum of
    kernel taps over strided views of the padded input: no im2col buffer (9x the input for a
    3x3 kernel), one multiply-add pass per tap, over a block of channels at a time so that
    the tap product needs TAP_BYTES, not a whole output (the detector's largest, 1.25 MB)."""

    src: str
    dst: str
    window: _Window
    taps_w: list[np.ndarray]  # per kernel offset, the weights [C, 1, ..., 1]
    epilogue: _Epilogue
    bufs: Buffers

    def __call__(self, env: Env) -> None:
        x = env[self.src]
        padded, _ = _pad_into(self.bufs, x, self.window.pads, 0.0, np.float32)
        taps = self.window.taps(padded)
        shape = taps[0].shape
        y = self.bufs.take("acc", shape)
        block = max(1, TAP_BYTES // (4 * math.prod(shape) // shape[1]))
        tmp = self.bufs.take("tap", (shape[0], min(block, shape[1])) + shape[2:])
        for c in range(0, shape[1], block):
            ch = slice(c, c + block)
            yc = y[:, ch]
            tc = tmp[:, :yc.shape[1]]
            np.multiply(taps[0][:, ch], self.taps_w[0][ch], out=yc)
            for view, w in zip(taps[1:], self.taps_w[1:]):
                np.multiply(view[:, ch], w[ch], out=tc)
                yc += tc
        env[self.dst] = self.epilogue(self.bufs, y)


def _int_dtype(w: np.ndarray, max_abs_x: float, axis_k: int):
    """float32 while every integer dot product stays below 2**24 (exact in sgemm), else float64."""
    bound = float(np.abs(w).sum(axis=axis_k).max()) * max_abs_x
    return np.float32 if bound < _EXACT_LIMIT else np.float64


def _op_conv(node: Node, ctx: Ctx) -> Step:
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
            return DepthwiseStep(x, node.outputs[0], window, [t.reshape(shape) for t in taps], _Epilogue(None, bias),
                                 ctx.buffers())
        mat = w.reshape(group, w.shape[0] // group, -1).astype(np.float32)
        return ConvStep(x, node.outputs[0], window, mat, None, _Epilogue(None, bias), ctx.buffers())
    wi = (qw.q.astype(np.float64) - _along(qw.zero, 0, w.ndim)).reshape(w.shape[0], -1)
    dtype = _int_dtype(wi, qa.max_abs, 1)
    mat = wi.reshape(group, w.shape[0] // group, -1).astype(dtype)
    mult = (np.float32(qa.scale) * qw.scale.reshape(-1)).astype(np.float32).reshape(shape_m)
    return ConvStep(qa.source, node.outputs[0], window, mat, qa.zero, _Epilogue(mult, bias), ctx.buffers())


@dataclass
class DenseStep:
    src: str
    b: str  # weight name (read from env: constants live there too)
    dst: str
    trans_a: bool
    weights: np.ndarray | None  # [K, N] integer path weights, else None (float path)
    zero: float | None
    epilogue: _Epilogue  # alpha and a constant C * beta are folded in
    bias: str  # a C the graph computes (not a constant), added at run time times beta; "" if none
    beta: float
    bufs: Buffers

    def __call__(self, env: Env) -> None:
        a = env[self.src]
        a = a.swapaxes(-1, -2) if self.trans_a else a
        a, w = (self._input(a), self.weights) if self.weights is not None else (a, env[self.b])
        shape = np.broadcast_shapes(a.shape[:-2], w.shape[:-2]) + (a.shape[-2], w.shape[-1])
        y = self.epilogue(self.bufs, np.matmul(a, w, out=self.bufs.take("acc", shape, a.dtype)))
        if self.bias:
            c = env[self.bias]
            y = np.add(y, np.multiply(c, self.beta, out=self.bufs.take("c", c.shape)), out=y)
        env[self.dst] = y

    def _input(self, a: np.ndarray) -> np.ndarray:
        if not self.zero and a.dtype == self.weights.dtype:
            return a
        xf = self.bufs.take("x", a.shape, self.weights.dtype)
        return np.subtract(a, self.zero or 0.0, out=xf, dtype=xf.dtype)


def _op_matmul(node: Node, ctx: Ctx) -> Step:
    return _dense(node, ctx, node.input(1), trans_a=False, trans_b=False, alpha=1.0, bias="", beta=1.0)


def _op_gemm(node: Node, ctx: Ctx) -> Step:
    at = node.attrs
    return _dense(node, ctx, node.input(1), trans_a=bool(at.get("transA", 0)), trans_b=bool(at.get("transB", 0)),
                  alpha=at.get("alpha", 1.0), bias=node.input(2), beta=at.get("beta", 1.0))


def _dense(node: Node, ctx: Ctx, w_name: str, *, trans_a: bool, trans_b: bool, alpha: float,
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
        return DenseStep(x, w_name, dst, trans_a, None, None, _Epilogue(mult, const_c), run_c, beta, ctx.buffers())
    wi = qw.q.astype(np.float64) - _along(qw.zero, n_axis, 2)
    wi = wi.T if trans_b else wi
    mult = (np.float32(qa.scale * alpha) * qw.scale.reshape(-1)).astype(np.float32)
    w = wi.astype(_int_dtype(wi, qa.max_abs, 0))
    return DenseStep(qa.source, w_name, dst, trans_a, w, qa.zero, _Epilogue(mult, const_c), run_c, beta,
                     ctx.buffers())


def _transposed_const(ctx: Ctx, name: str, node: Node) -> str:
    key = f"{name}#T"
    ctx.consts[key] = np.ascontiguousarray(ctx.const(name, node).T)
    return key


def _op_pool(combine: Callable, fill: float) -> Callable[[Node, Ctx], Step]:
    """MaxPool (combine np.maximum) or AveragePool (np.add, then / taps): one ufunc per kernel offset."""
    def build(node: Node, ctx: Ctx) -> Step:
        window = _Window.from_attrs(node.attrs, node.attrs["kernel_shape"], node, ctx)
        mean = combine is np.add
        exclude_pad = mean and any(window.pads) and not node.attrs.get("count_include_pad", 0)
        src, dst, bufs, counts = node.input(0), node.outputs[0], ctx.buffers(), {}

        def step(env: Env) -> None:
            x = env[src]
            padded = _pad_into(bufs, x, window.pads, fill, np.float32)[0] if any(window.pads) else x
            views = window.taps(padded)
            y = bufs.take("y", views[0].shape)
            np.copyto(y, views[0], casting="unsafe")
            for v in views[1:]:
                combine(y, v, out=y)
            if mean:
                np.divide(y, _tap_counts(counts, x.shape, window, exclude_pad), out=y)
            env[dst] = y
        return step
    return build


def _tap_counts(counts: dict, shape: tuple, window: _Window, exclude_pad: bool) -> np.ndarray:
    """Taps per output of an average: the kernel size, or only the taps inside the input (kept per shape)."""
    if not exclude_pad:
        return np.float32(math.prod(window.kernel))
    if counts.get("shape") != shape:
        nd = len(shape) - 2
        ones = np.pad(np.ones((1, 1) + shape[2:], np.float32),
                      [(0, 0), (0, 0)] + [(window.pads[i], window.pads[i + nd]) for i in range(nd)])
        counts["counts"], counts["shape"] = sum(window.taps(ones)), shape
    return counts["counts"]


def _op_global_average_pool(node: Node, ctx: Ctx) -> Step:
    src, dst, bufs = node.input(0), node.outputs[0], ctx.buffers()

    def step(env: Env) -> None:
        x = env[src]
        out = bufs.take("y", x.shape[:2] + (1,) * (x.ndim - 2))
        env[dst] = np.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True, out=out)
    return step


def _op_reduce(reduce: Callable) -> Callable[[Node, Ctx], Step]:
    def build(node: Node, ctx: Ctx) -> Step:
        src, axes_name, dst, bufs = node.input(0), node.input(1), node.outputs[0], ctx.buffers()
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
            env[dst] = reduce(x, axis=ax, keepdims=keep, out=bufs.take("y", shape, x.dtype))
        return step
    return build


# ---------------------------------------------------------------- shape ops (views where possible)

def _contiguous(bufs: Buffers, x: np.ndarray) -> np.ndarray:
    if x.flags.c_contiguous:
        return x
    b = bufs.take("c", x.shape, x.dtype)
    np.copyto(b, x)
    return b


def _op_reshape(node: Node, ctx: Ctx) -> Step:
    src, shape_name, dst, bufs = node.input(0), node.input(1), node.outputs[0], ctx.buffers()
    allow_zero = node.attrs.get("allowzero", 0)

    def step(env: Env) -> None:
        x = env[src]
        shape = [int(s) for s in env[shape_name]]
        shape = [x.shape[i] if s == 0 and not allow_zero else s for i, s in enumerate(shape)]
        env[dst] = _contiguous(bufs, x).reshape(shape)
    return step


def _op_flatten(node: Node, ctx: Ctx) -> Step:
    src, dst, axis, bufs = node.input(0), node.outputs[0], node.attrs.get("axis", 1), ctx.buffers()

    def step(env: Env) -> None:
        x = env[src]
        env[dst] = _contiguous(bufs, x).reshape(int(np.prod(x.shape[:axis])), -1)
    return step


def _axes_op(fn: Callable) -> Callable[[Node, Ctx], Step]:
    """Squeeze / Unsqueeze: axes from input 1 (opset 13+) or the attribute."""
    def build(node: Node, ctx: Ctx) -> Step:
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


def _op_transpose(node: Node, ctx: Ctx) -> Step:
    src, dst, perm = node.input(0), node.outputs[0], node.attrs.get("perm")

    def step(env: Env) -> None:
        env[dst] = np.transpose(env[src], perm)
    return step


def _op_concat(node: Node, ctx: Ctx) -> Step:
    names, dst, axis, bufs = [n for n in node.inputs if n], node.outputs[0], node.attrs["axis"], ctx.buffers()

    def step(env: Env) -> None:
        parts = [env[n] for n in names]
        ax = axis % parts[0].ndim
        shape = parts[0].shape[:ax] + (sum(p.shape[ax] for p in parts),) + parts[0].shape[ax + 1:]
        out = bufs.take("y", shape, np.result_type(*parts))
        env[dst] = np.concatenate(parts, axis=ax, out=out)
    return step


def _op_slice(node: Node, ctx: Ctx) -> Step:
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


_RESIZE_EXACT = {("asymmetric", "floor"), ("half_pixel", "round_prefer_floor"),
                 ("pytorch_half_pixel", "round_prefer_floor")}
"""Nearest-neighbour coordinate modes under which an integer upscale repeats each element."""


def _op_resize(node: Node, ctx: Ctx) -> Step:
    """Resize, mode nearest, by integer factors: each element repeated (a feature-pyramid upsample)."""
    at = node.attrs
    modes = (at.get("coordinate_transformation_mode", "half_pixel"), at.get("nearest_mode", "round_prefer_floor"))
    if at.get("mode", "nearest") != "nearest" or modes not in _RESIZE_EXACT:
        raise BundleError(f"{ctx.path}: {node.label()}: only mode nearest with coordinate modes "
                          f"{sorted(_RESIZE_EXACT)} is supported, got {at.get('mode', 'nearest')} {modes}")
    src, scales_name, sizes_name, dst = node.input(0), node.input(2), node.input(3), node.outputs[0]
    bufs = ctx.buffers()
    scales = ctx.const(scales_name, node) if scales_name else np.zeros(0)
    sizes = ctx.const(sizes_name, node) if sizes_name else None

    def step(env: Env) -> None:
        x = env[src]
        factors = _resize_factors(x.shape, scales, sizes)
        y = bufs.take("y", tuple(s * f for s, f in zip(x.shape, factors)), x.dtype)
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


def _op_shape(node: Node, ctx: Ctx) -> Step:
    src, dst = node.input(0), node.outputs[0]
    start, end = node.attrs.get("start", 0), node.attrs.get("end")

    def step(env: Env) -> None:
        env[dst] = np.array(env[src].shape[start:end], np.int64)
    return step


def _op_gather(node: Node, ctx: Ctx) -> Step:
    src, idx, dst, axis = node.input(0), node.input(1), node.outputs[0], node.attrs.get("axis", 0)

    def step(env: Env) -> None:
        env[dst] = np.take(env[src], env[idx], axis=axis)
    return step


def _op_identity(node: Node, ctx: Ctx) -> Step:
    src, dst = node.input(0), node.outputs[0]

    def step(env: Env) -> None:
        env[dst] = env[src]
    return step


OPS: dict[str, Callable[[Node, Ctx], Step | None]] = {
    "Conv": _op_conv, "Gemm": _op_gemm, "MatMul": _op_matmul,
    "Relu": _unary(lambda x, y, at: np.maximum(x, 0, out=y)), "Clip": _op_clip,
    "Sigmoid": _unary(_sigmoid), "Sqrt": _unary(lambda x, y, at: np.sqrt(x, out=y)),
    "Log": _unary(lambda x, y, at: np.log(x, out=y)),
    "Add": _binary(np.add), "Sub": _binary(np.subtract), "Mul": _binary(np.multiply), "Div": _binary(_div),
    "Cast": _op_cast,
    "GlobalAveragePool": _op_global_average_pool,
    "AveragePool": _op_pool(np.add, 0.0), "MaxPool": _op_pool(np.maximum, -np.inf),
    "ReduceMean": _op_reduce(np.mean), "ReduceMax": _op_reduce(np.max),
    "Reshape": _op_reshape, "Flatten": _op_flatten, "Squeeze": _axes_op(_squeeze),
    "Unsqueeze": _axes_op(_unsqueeze), "Transpose": _op_transpose, "Concat": _op_concat,
    "Slice": _op_slice, "Resize": _op_resize, "Identity": _op_identity, "Shape": _op_shape,
    "Gather": _op_gather,
    "QuantizeLinear": _op_quantize, "DequantizeLinear": _op_dequantize,
}
