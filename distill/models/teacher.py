"""Audio-visual teacher (Ma et al. 2020): audio net + visual net + fusion net + label embedding.

In:  waveform float32 [B, T] (16 kHz mono, any T >= 2 hops; trained on `window_s` crops)
     and/or faces as raw gray values 0..255, [B, S, S] or [B, T, S, S] (T frames of a clip,
     mean-pooled over time). Faces are standardized inside, like the runtime does per crop.
Out: per branch (logits [B, n_labels], embedding [B, D]) — the embeddings are the
     common-space features the Soft-HGR terms correlate and the students regress — plus
     fused logits when both modalities are given. `embed_labels(y)` gives the label
     embedding [B, D]. Each branch runs alone, so unimodal corpora train their branch.
Checkpoints: `save_teacher` / `load_teacher(path) -> (model, meta)`; meta holds the config,
labels, which data trained which branch, and metrics.
"""
from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from distill.models.frontend import LogMelFrontEnd
from distill.models.students import UtteranceNorm, conv_bn
from edge.errors import AvemoError
from edge.settings import FACE, LABELS

CHECKPOINT_FORMAT = "avemo-teacher/1"


@dataclass(frozen=True)
class TeacherConfig:
    labels: tuple[str, ...] = LABELS
    embed_dim: int = 32
    """D, the common-space (HGR) feature size; the students' embedding size."""
    window_s: float = 2.0
    """Audio crop used in training."""
    frames: int = 4
    """Face frames per video clip (a still image is one frame)."""
    face_size: int = FACE.size
    audio_channels: tuple[int, ...] = (32, 64, 128)
    face_channels: tuple[int, ...] = (32, 64, 128)
    fusion_hidden: int = 128
    dropout: float = 0.3

    @classmethod
    def from_dict(cls, d: dict) -> "TeacherConfig":
        tuples = {k: tuple(v) for k, v in d.items() if isinstance(v, list)}
        return cls(**{**d, **tuples})


def conv_stack(channels: tuple[int, ...]) -> nn.Sequential:
    """(Conv3x3 + BN + ReLU + MaxPool2) per stage, then global average pooling -> [B, C]."""
    layers: list[nn.Module] = []
    cin = 1
    for cout in channels:
        layers += [conv_bn(cin, cout), nn.MaxPool2d(2)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


class AudioNet(nn.Module):
    """waveform [B, T] -> log-mel (runtime front end) -> utterance norm -> CNN -> [B, C]."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.frontend = LogMelFrontEnd()
        self.norm = UtteranceNorm()
        self.cnn = conv_stack(channels)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.cnn(self.norm(self.frontend(wave)).unsqueeze(1))


class VisualNet(nn.Module):
    """faces [B, T, S, S] (0..255) -> per-crop standardization -> shared CNN -> mean over T."""

    def __init__(self, channels: tuple[int, ...], std_floor: float = FACE.std_floor) -> None:
        super().__init__()
        self.std_floor = std_floor
        self.cnn = conv_stack(channels)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        if faces.dim() == 3:
            faces = faces.unsqueeze(1)
        b, t, s, _ = faces.shape
        x = faces.reshape(b * t, 1, s, s).float()
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = x.std(dim=(2, 3), keepdim=True, unbiased=False).clamp_min(self.std_floor)
        return self.cnn((x - mean) / std).reshape(b, t, -1).mean(dim=1)


class Branch(nn.Module):
    """features [B, C] -> (logits [B, n], common-space embedding [B, D])."""

    def __init__(self, cin: int, n_labels: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(cin, n_labels))
        self.embed = nn.Linear(cin, dim)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.classifier(feats), self.embed(feats)


class Teacher(nn.Module):
    def __init__(self, config: TeacherConfig = TeacherConfig()) -> None:
        super().__init__()
        self.config = config
        n, d = len(config.labels), config.embed_dim
        self.audio_net = AudioNet(config.audio_channels)
        self.visual_net = VisualNet(config.face_channels)
        ca, cv = config.audio_channels[-1], config.face_channels[-1]
        self.audio_branch = Branch(ca, n, d, config.dropout)
        self.visual_branch = Branch(cv, n, d, config.dropout)
        self.fusion = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(ca + cv, config.fusion_hidden), nn.ReLU(),
                                    nn.Linear(config.fusion_hidden, n))
        self.label_embedding = nn.Embedding(n, d)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.labels

    def audio_logits_and_embedding(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waveform [B, T] -> (logits [B, n_labels], embedding [B, D])."""
        return self.audio_branch(self.audio_net(wave))

    def face_logits_and_embedding(self, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """faces 0..255 [B, S, S] or [B, T, S, S] -> (logits [B, n_labels], embedding [B, D])."""
        return self.visual_branch(self.visual_net(faces))

    def embed_labels(self, y: torch.Tensor) -> torch.Tensor:
        return self.label_embedding(y.clamp_min(0))

    def forward(self, wave: torch.Tensor | None = None, faces: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """What the inputs allow: audio_logits/audio_emb, face_logits/face_emb, fused_logits,
        label_emb (for label indices y; -1 = unlabeled rows get an arbitrary embedding)."""
        out: dict[str, torch.Tensor] = {}
        if y is not None:
            out["label_emb"] = self.embed_labels(y)
        if wave is not None:
            fa = self.audio_net(wave)
            out["audio_logits"], out["audio_emb"] = self.audio_branch(fa)
        if faces is not None:
            fv = self.visual_net(faces)
            out["face_logits"], out["face_emb"] = self.visual_branch(fv)
        if wave is not None and faces is not None:
            out["fused_logits"] = self.fusion(torch.cat([fa, fv], dim=1))
        return out


def save_teacher(path: str | Path, model: Teacher, meta: dict, **training_state) -> None:
    """Write {format, config, state_dict, meta, **training_state} atomically."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "config": asdict(model.config), "state_dict": model.state_dict(),
                "meta": meta, **training_state}, tmp)
    tmp.replace(path)


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise AvemoError(f"{path}: cannot read teacher checkpoint ({err}); train one with "
                         "python -m distill.train teacher") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise AvemoError(f"{path}: not a teacher checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return ckpt


def load_teacher(path: str | Path, device: str = "cpu") -> tuple[Teacher, dict]:
    """(eval-mode Teacher, meta) from a checkpoint; meta also carries 'config' and 'epoch'."""
    ckpt = read_checkpoint(path)
    model = Teacher(TeacherConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    meta = {**ckpt["meta"], "config": ckpt["config"], "epoch": ckpt.get("epoch")}
    return model.to(device).eval(), meta
