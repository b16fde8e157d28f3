"""Quantization-aware fine-tuning: make a student answer the same in int8 as in float.

Why: post-training int8 (onnxruntime static QDQ) flipped ~3 % of the validation answers of
the shipped students. Those are inputs whose float top-two margin is below the int8 noise;
calibration choices did not move that, so the weights have to.

`FakeQuant(model)` emulates the export's scheme on a torch student: per-output-channel
symmetric int8 weights on every Conv2d/Linear except the body's first (stem) Conv, which the
export keeps float with its float input (distill.quantize.float_nodes), and per-tensor
asymmetric uint8 activations (range = running min/max, like the min/max calibrator) on the
tensors the QDQ graph quantizes: every ReLU/ReLU6 output (Conv+ReLU is one
quantized op), each BatchNorm output that no activation follows (linear projections), each
residual sum, and every Linear's input and output. Rounding passes gradients straight
through. A BatchNorm scales each output channel, so per-channel symmetric weight rounding
before folding equals rounding after folding.

`agreement_loss(float_logits, int8_logits)`: symmetric KL between the two answers; the
training loop (distill.distillation) adds `FitConfig.qat` times it when `qat > 0`, from a
second forward pass with fake quantization on. The float weights are what gets exported.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

ACTIVATION_MOMENTUM = 0.1
"""Weight of each batch's min/max in the running activation range."""


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric int8 rounding of a weight (identity while off)."""

    def __init__(self) -> None:
        super().__init__()
        self.on = False

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.on:
            return w
        amax = w.detach().abs().flatten(1).amax(1).clamp_min(1e-8)
        scale = (amax / 127.0).reshape(-1, *([1] * (w.dim() - 1)))
        return _round_ste(w / scale).clamp(-127, 127) * scale


class ActivationFakeQuant:
    """uint8 affine rounding of one tensor over its running [min, max] (0 always inside)."""

    def __init__(self) -> None:
        self.on = False
        self.low: torch.Tensor | None = None
        self.high: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.on:
            return x
        self._observe(x.detach())
        scale = ((self.high - self.low) / 255.0).clamp_min(1e-8)
        zero = torch.round(-self.low / scale).clamp(0, 255)
        q = (_round_ste(x / scale) + zero).clamp(0, 255)
        return (q - zero) * scale

    def _observe(self, x: torch.Tensor) -> None:
        low, high = x.min().clamp_max(0.0), x.max().clamp_min(0.0)
        if self.low is None:
            self.low, self.high = low, high
        else:
            self.low = self.low + ACTIVATION_MOMENTUM * (low - self.low)
            self.high = self.high + ACTIVATION_MOMENTUM * (high - self.high)


def quantized_outputs(model: nn.Module) -> list[nn.Module]:
    """Modules whose output the QDQ graph quantizes (module docstring)."""
    found: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, (nn.ReLU, nn.ReLU6, nn.Linear)):
            found.append(module)
        elif getattr(module, "skip", False):
            found.append(module)  # InvertedResidual: x + block(x)
        elif isinstance(module, nn.Sequential):
            children = list(module)
            found += [bn for bn, nxt in zip(children, children[1:] + [None])
                      if isinstance(bn, nn.BatchNorm2d) and not isinstance(nxt, (nn.ReLU, nn.ReLU6))]
    return found


class FakeQuant:
    """Fake int8 on a student (module docstring); off until `enabled()`; `remove()` restores it."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.weights: list[tuple[nn.Module, WeightFakeQuant]] = []
        self.activations: list[ActivationFakeQuant] = []
        self.handles = []
        stem = next(m for m in model.body.modules() if isinstance(m, nn.Conv2d))
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module is not stem:
                fq = WeightFakeQuant()
                parametrize.register_parametrization(module, "weight", fq)
                self.weights.append((module, fq))
        for module in model.modules():
            if isinstance(module, nn.Linear):
                self._hook_input(module)
        for module in quantized_outputs(model):
            fq = self._new_activation()
            self.handles.append(module.register_forward_hook(lambda _m, _i, out, fq=fq: fq(out)))

    def _new_activation(self) -> ActivationFakeQuant:
        self.activations.append(ActivationFakeQuant())
        return self.activations[-1]

    def _hook_input(self, module: nn.Module) -> None:
        fq = self._new_activation()
        self.handles.append(module.register_forward_pre_hook(lambda _m, args, fq=fq: (fq(args[0]),)))

    @contextlib.contextmanager
    def enabled(self) -> Iterator[None]:
        """Fake quantization on for the forward passes inside the block."""
        self._switch(True)
        try:
            yield
        finally:
            self._switch(False)

    def _switch(self, on: bool) -> None:
        for _, fq in self.weights:
            fq.on = on
        for fq in self.activations:
            fq.on = on

    def remove(self) -> nn.Module:
        """Take every hook and parametrization off; the model keeps its float weights."""
        for handle in self.handles:
            handle.remove()
        for module, _ in self.weights:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        return self.model


def agreement_loss(float_logits: torch.Tensor, int8_logits: torch.Tensor) -> torch.Tensor:
    """Symmetric KL between the float and the fake-int8 class distributions, batch mean."""
    log_f, log_q = F.log_softmax(float_logits, 1), F.log_softmax(int8_logits, 1)
    return 0.5 * (F.kl_div(log_q, log_f, reduction="batchmean", log_target=True)
                  + F.kl_div(log_f, log_q, reduction="batchmean", log_target=True))
