"""numpy backend: runs a bundle's `model.npz` (docs/bundle-format.md) with numpy only.

This module reads the payload, plans the graph and runs it; the op kernels are in
numpy_ops.py (`SUPPORTED_OPS` lists their op types).

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

Memory is planned as TFLite plans its arena: the first run with given input shapes records
every buffer the steps take (activations, padded inputs, im2col columns; out= everywhere numpy
allows) with the steps it lives through (from the step that writes it to its last reader), and
drops each activation after its last reader; then one block is laid out in which buffers alive
at the same time never share bytes (numpy_ops.Arena). Later runs with those shapes reuse the
block and allocate nothing, so memory stays flat over any number of runs, and a graph holds
about its largest set of simultaneously live activations, not every activation at once.
A session sets numpy's OpenBLAS pool to `threads` for each run and restores it after.
"""
from __future__ import annotations

import ctypes
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.backends.numpy_ops import OPS, ConvStep, Ctx, DenseStep, DepthwiseStep, Env, Node, QuantizeStep, Step
from edge.bundle import Bundle
from edge.errors import BundleError

NAME = "numpy"
SUPPORTED_OPS = frozenset(OPS)


def available() -> bool:
    return True


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

    node: Node
    step: Step
    reads: set[str]
    writes: list[str]


def _nodes(graph: dict, ctx: Ctx) -> list[Node]:
    nodes = [Node(i, raw["op"], str(raw.get("name", "")), raw["inputs"], raw["outputs"], raw.get("attrs", {}))
             for i, raw in enumerate(graph["nodes"])]
    for node in nodes:
        for name in node.inputs:
            ctx.readers.setdefault(name, []).append(node)
    return nodes


def _plan(graph: dict, ctx: Ctx) -> list[_Entry]:
    known = set(ctx.consts) | {v["name"] for v in graph["inputs"]} | {""}
    plan = []
    for node in _nodes(graph, ctx):
        builder = OPS.get(node.op)
        if builder is None:
            raise BundleError(f"{ctx.path}: unknown op {node.op!r} at {node.label()}: the numpy backend "
                              f"supports {', '.join(sorted(OPS))}; use the onnxruntime backend or change the model")
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


def _fuse_relu(plan: list[_Entry], ctx: Ctx) -> list[_Entry]:
    """Fold each Relu into the float Conv that alone feeds it (the epilogue clamps in place)."""
    producers = {name: e for e in plan for name in e.writes}
    kept = []
    for e in plan:
        src = e.node.input(0)
        p = producers.get(src) if e.node.op == "Relu" else None
        if p is not None and isinstance(p.step, (ConvStep, DepthwiseStep)) and getattr(p.step, "zero", None) is None \
                and len(ctx.readers[src]) == 1 and src not in ctx.outputs:
            p.step.epilogue.relu = True
            p.step.dst, p.writes = e.node.outputs[0], [e.node.outputs[0]]
        else:
            kept.append(e)
    return kept


def _reads(node: Node, ctx: Ctx, step: Step) -> set[str]:
    """Tensor names a step reads (fused steps read the quantized source, not the DequantizeLinear)."""
    reads = set(node.inputs)
    src = getattr(step, "src", None)  # set by ConvStep and DenseStep
    if src is not None and node.input(0) in ctx.qacts and src == ctx.qacts[node.input(0)].source:
        reads = (reads - {node.input(0)}) | {src}
    return reads


def _fuse_quantize(plan: list[_Entry], ctx: Ctx) -> list[_Entry]:
    """Fold each centered QuantizeLinear into the Conv/Gemm/MatMul step that alone feeds it."""
    producers = {name: e for e in plan for name in e.writes}
    kept = []
    for e in plan:
        q = e.step
        p = producers.get(q.src) if isinstance(q, QuantizeStep) and q.centered else None
        if p is not None and _fusable(p.step) and len(ctx.readers[q.src]) == 1 and q.src not in ctx.outputs:
            p.step.epilogue.fuse(q)
            p.step.dst, p.writes = q.dst, [q.dst]
        else:
            kept.append(e)
    return kept


def _fusable(step: Step) -> bool:
    return isinstance(step, ConvStep) or (isinstance(step, DenseStep) and not step.bias)


def _prune(plan: list[_Entry], outputs: list[str]) -> list[_Entry]:
    """Drop steps whose outputs no later step or graph output reads."""
    needed, kept = set(outputs), []
    for e in reversed(plan):
        if needed & set(e.writes):
            needed |= e.reads
            kept.append(e)
    return kept[::-1]


@dataclass
class _Planned:
    """A step as the interpreter runs it, with what its liveness needs."""

    node: Node
    step: Step
    writes: list[tuple[str, int]]  # (output, index of the last step reading it; len(steps) for graph outputs)
    frees: list[str]  # tensors no step after this one reads (dropped while recording)


def _liveness(plan: list[_Entry], outputs: list[str], keep: set[str]) -> list[_Planned]:
    """Each step with its outputs' last readers and the tensors that die after it (not `keep`)."""
    n = len(plan)
    last = {name: i for i, e in enumerate(plan) for name in e.reads}
    last.update({name: n for name in outputs})
    for i, e in enumerate(plan):
        for name in e.writes:
            last.setdefault(name, i)  # written and never read: dies at once
    frees: list[list[str]] = [[] for _ in plan]
    for name, i in last.items():
        if i < n and name not in keep:
            frees[i].append(name)
    return [_Planned(e.node, e.step, [(w, last[w]) for w in e.writes], frees[i]) for i, e in enumerate(plan)]


class NumpyInterpreter:
    """Runs a model.npz. `run({input: array}) -> {graph output name: float32 copy}`."""

    def __init__(self, npz_path: str | Path) -> None:
        self.path = Path(npz_path)
        graph, inits = _read_npz(self.path)
        self.inputs = {v["name"]: tuple(v["shape"]) for v in graph["inputs"]}
        self.output_names = list(graph["outputs"])
        ctx = Ctx(self.path, dict(inits), set(self.output_names))
        plan = _plan(graph, ctx)
        produced = set(ctx.consts) | set(self.inputs) | {o for e in plan for o in e.writes}
        lost = [o for o in self.output_names if o not in produced]
        if lost:
            raise BundleError(f"{self.path}: graph output {lost[0]!r} is never produced: re-export the model")
        self._steps = _liveness(_prune(plan, self.output_names), self.output_names,
                                set(ctx.consts) | set(self.inputs) | {""})
        self._arena = ctx.arena
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
        with self._arena.shared.lock:
            return self._run(feeds)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._feed(feeds)
        recording = self._arena.prepare(tuple(self._env[name].shape for name in self.inputs))
        s = None
        try:
            for i, s in enumerate(self._steps):
                s.step(self._env)
                if recording:
                    self._recorded(i, s)
        except (ValueError, IndexError, TypeError, KeyError, ZeroDivisionError, OverflowError, MemoryError) as e:
            self._arena.stale = True
            shapes = {k: list(np.shape(v)) for k, v in feeds.items()}
            raise BundleError(f"{self.path}: {s.node.label()} failed on input shapes {shapes} "
                              f"({type(e).__name__}: {e}): check the input against the bundle's spec") from None
        out = {name: np.array(self._env[name], dtype=np.float32) for name in self.output_names}
        if recording:
            self._end_recording()
        return out

    def _recorded(self, i: int, s: _Planned) -> None:
        """While recording: extend the lives of the buffers step i wrote, drop what nothing reads again."""
        written = [(self._env[w], last) for w, last in s.writes if isinstance(self._env.get(w), np.ndarray)]
        self._arena.step_done(i, written)
        for name in s.frees:
            self._env.pop(name, None)

    def _end_recording(self) -> None:
        """Drop the recorded run's activations, then lay out the arena they fit in."""
        for s in self._steps:
            for w, _ in s.writes:
                self._env.pop(w, None)
        self._arena.plan()


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
