"""The two students that run on the device, and BatchNorm folding for export.

AudioStudent (Wav2Small-style), <= 100K parameters:
  In:  waveform float32 [B, T] (16 kHz, T a multiple of hop; the runtime feeds 2.0 s).
  -> `frontend` (LogMelFrontEnd, fixed weights) -> log-mel [B, F, n_mels]
  -> per-utterance normalization: (x - mean) / sqrt(var + eps) over all frames and bands, or
     with `speaker_norm` per band by a second input, the speaker statistics [B, 2, n_mels]
     (SpeakerNorm; live speaker adaptation, edge/speaker.py)
  -> 5 x (Conv3x3 + BatchNorm + ReLU), MaxPool 2x2 after the first four, on the [F, n_mels]
     image -> mean over the mel axis -> [mean over time, max over time] [2C] -> `embedding`
     Linear (D = 32) -> ReLU -> Linear -> logits. (The mean+max pooling replaced a
     time-mean of the flattened [C x bands] map: it cross-validated better over actors,
     docs/students.md.)
FaceStudent (MobileNetV2-style, ReLU6 only, no hard-swish, no squeeze-excite), <= 500K:
  In:  face float32 [B, 1, S, S], S = 48, crop standardized per crop (edge/settings.FACE).
  -> stem Conv3x3 stride 2 -> inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 project,
     Add when shapes match) -> 1x1 Conv -> global average pool -> `embedding` -> logits.
Both: forward(x) -> (logits [B, n_labels], embedding [B, 32]). `fold_batchnorm(model)`
returns an eval-mode copy with every BatchNorm merged into the conv before it, so the
exported graph is Conv/Relu/Clip/MaxPool/Add/GlobalAveragePool/Gemm (audio: one ReduceMean
and one ReduceMax over time before the head): integer end to end.
"""
from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

from distill.models.frontend import LogMelFrontEnd
from edge.settings import AUDIO, AudioFrontEnd
from edge.views import is_zoom_factor, zoom_matrix

EMBEDDING_DIM = 32
AUDIO_CHANNELS = (16, 32, 48, 64, 64)
FACE_BLOCKS = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 3, 2), (4, 64, 3, 2), (4, 96, 2, 1),
               (4, 128, 1, 2))
"""Inverted residual stages: (expansion t, out channels c, repeats n, first stride s)."""
FACE_HEAD = 256


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
            act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Conv (no bias) + BatchNorm [+ activation]; folded to one Conv by fold_batchnorm."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class UtteranceNorm(nn.Module):
    """Per-utterance standardization of a log-mel [B, F, M] by one mean and one variance over
    all frames and bands: removes gain, keeps the spectral shape (a per-band version would
    erase every stationary cue, e.g. the long-term spectral tilt)."""

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centered = x - x.mean(dim=(1, 2), keepdim=True)
        return centered / torch.sqrt((centered * centered).mean(dim=(1, 2), keepdim=True) + self.eps)


class SpeakerNorm(nn.Module):
    """Per-band standardization of a log-mel [B, F, M] by a speaker's statistics [B, 2, M]
    (row 0 band means, row 1 band standard deviations; edge/speaker.py computes them from the
    voiced audio heard so far, or from the window alone): removes the speaker's and the
    channel's timbre, keeps what moves within the speaker's range. Float in the int8 graph
    (upstream of the first Conv, like the front end)."""

    def forward(self, x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        return (x - stats[:, 0:1, :]) / stats[:, 1:2, :]


class EmbeddingHead(nn.Module):
    """features [B, C] -> (logits [B, n], embedding [B, D])."""

    def __init__(self, cin: int, n_labels: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Linear(cin, EMBEDDING_DIM)
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(EMBEDDING_DIM, n_labels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embedding(x)
        return self.classifier(self.drop(torch.relu(emb))), emb


def label_embedding(n_labels: int) -> nn.Linear:
    """Label distribution [B, n] -> the common space [B, D]: the label side of the Soft-HGR
    term a teacher trains with (`hgr`); training only, never exported."""
    return nn.Linear(n_labels, EMBEDDING_DIM, bias=False)


class AudioStudent(nn.Module):
    """Raw waveform -> (logits, embedding); log-mel inside the model (module docstring).
    `width` scales the channel counts (a teacher member); `hgr` adds `label_embedding`, which
    the Soft-HGR term correlates with the embedding during training (never exported);
    `speaker_norm` normalizes by a second input, the speaker statistics (SpeakerNorm)."""

    def __init__(self, n_labels: int = 8, fe: AudioFrontEnd = AUDIO,
                 channels: tuple[int, ...] = AUDIO_CHANNELS, dropout: float = 0.3,
                 width: float = 1.0, hgr: bool = False, speaker_norm: bool = False) -> None:
        super().__init__()
        self.frontend = LogMelFrontEnd(fe)
        self.speaker_norm = speaker_norm
        """True: a second input, the speaker statistics [B, 2, n_mels] (SpeakerNorm)."""
        self.norm = SpeakerNorm() if speaker_norm else UtteranceNorm()
        layers: list[nn.Module] = []
        cin = 1
        for i, cout in enumerate(int(round(c * width)) for c in channels):
            layers.append(conv_bn(cin, cout))
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = cout
        self.body = nn.Sequential(*layers)
        self.head = EmbeddingHead(2 * cin, n_labels, dropout)
        self.label_embedding = label_embedding(n_labels) if hgr else None

    def forward(self, wave: torch.Tensor, stats: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.norm(self.frontend(wave), stats) if self.speaker_norm else self.norm(self.frontend(wave))
        if self.training:
            x = spec_augment(x)
        x = self.body(x.unsqueeze(1)).mean(dim=3)             # [B, C, frames]
        return self.head(torch.cat([x.mean(dim=2), x.amax(dim=2)], dim=1))


def spec_augment(x: torch.Tensor, bands: int = 6, frames: int = 20, masks: int = 1) -> torch.Tensor:
    """SpecAugment (training only, never exported): zero `masks` random runs of up to
    `bands` mel bands and of up to `frames` frames per item of a normalized log-mel [B, F, M]."""
    b, f, m = x.shape
    keep = torch.ones(x.shape)                  # drawn on the CPU generator on any device
    for _ in range(masks):
        for size, length, axis in ((bands, m, 2), (frames, f, 1)):
            width = torch.randint(0, size + 1, (b, 1))
            start = (torch.rand(b, 1) * (length - width).clamp_min(1)).long()
            pos = torch.arange(length)[None, :]
            hit = ((pos >= start) & (pos < start + width)).float()
            keep = keep * (1 - (hit[:, None, :] if axis == 2 else hit[:, :, None]))
    return x * keep.to(x.device)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise -> 1x1 linear project (+ skip)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn(cin, hidden, 1, act=nn.ReLU6)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   conv_bn(hidden, cout, 1, act=None)]
        self.block = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.skip else self.block(x)


class FaceStudent(nn.Module):
    """Gray face crop [B, 1, S, S] -> (logits, embedding) (module docstring).

    `width` scales every channel count (the face teacher is this net at width 1.5); `hgr`
    adds `label_embedding` (as AudioStudent's)."""

    def __init__(self, n_labels: int = 7, blocks: tuple = FACE_BLOCKS, stem: int = 32,
                 stem_stride: int = 2, head: int = FACE_HEAD, dropout: float = 0.2,
                 width: float = 1.0, hgr: bool = False) -> None:
        super().__init__()
        wide = lambda c: int(round(c * width))  # noqa: E731
        layers: list[nn.Module] = [conv_bn(1, wide(stem), 3, stem_stride, act=nn.ReLU6)]
        cin = wide(stem)
        for t, c, n, s in blocks:
            for i in range(n):
                layers.append(InvertedResidual(cin, wide(c), s if i == 0 else 1, t))
                cin = wide(c)
        head = wide(head)
        layers.append(conv_bn(cin, head, 1, act=nn.ReLU6))
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = EmbeddingHead(head, n_labels, dropout)
        self.label_embedding = label_embedding(n_labels) if hgr else None

    def forward(self, face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.pool(self.body(face)).flatten(1))


def zoom_factors(text: str) -> tuple[float, ...]:
    """`--zoom-views` "1.1" or "1.05,1.1": face zoom views (edge/views.py), each above 1 and at
    most 2; the empty string for none."""
    try:
        zooms = tuple(float(z) for z in text.split(",") if z.strip())
    except ValueError:
        zooms = (0.0,)
    if not all(is_zoom_factor(z) for z in zooms):
        raise argparse.ArgumentTypeError(f"{text!r}: give zoom factors above 1 and at most 2, e.g. 1.1 or 1.05,1.1")
    return zooms


class Ensemble(nn.Module):
    """Members of one modality as one model: the log of their mean probabilities over the
    test-time views (with `mirror`, each face and its mirror image; with `zooms`, also the
    face's centre enlarged by each factor and its mirror: edge/views.py's views, made with the
    same matrices) as logits. The embedding is the mean over the views for a single member;
    members' common spaces differ, so several members give an empty one [B, 0]. A teacher
    made of students."""

    def __init__(self, members: list[nn.Module], mirror: bool = False, zooms: tuple[float, ...] = ()) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.mirror = mirror
        self.zooms = zooms
        self.speaker_norm = getattr(members[0], "speaker_norm", False)

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[x, x zoomed by each factor, and the mirror of each when `mirror`] (faces [B, 1, S, S])."""
        mats = [torch.from_numpy(zoom_matrix(x.shape[-1], z)).to(x) for z in self.zooms]
        views = [x, *(m @ x @ m.T for m in mats)]
        return views + [v.flip(-1) for v in views] if self.mirror else views

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        views = [(v, *inputs[1:]) for v in self.views(inputs[0])]
        outs = [m(*v) for m in self.members for v in views]
        probs = torch.stack([torch.softmax(o[0], 1) for o in outs]).mean(0)
        emb = torch.stack([o[1] for o in outs]).mean(0) if len(self.members) == 1 else probs.new_zeros(len(probs), 0)
        return torch.log(probs.clamp_min(1e-6)), emb


def count_params(model: nn.Module) -> int:
    """Trainable parameters (front-end buffers are not parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, groups=conv.groups, bias=True)
    fused.weight.data = conv.weight.data * scale.reshape(-1, 1, 1, 1)
    bias = conv.bias.data if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.data = (bias - bn.running_mean) * scale + bn.bias
    return fused


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Eval-mode copy of `model` with each Conv2d+BatchNorm2d pair merged into one Conv2d."""
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Sequential):
                _fold_sequential(module)
    return model


def _fold_sequential(seq: nn.Sequential) -> None:
    names = list(seq._modules)
    for a, b in zip(names, names[1:]):
        conv, bn = seq._modules.get(a), seq._modules.get(b)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            seq._modules[a] = _fold(conv, bn)
            del seq._modules[b]
