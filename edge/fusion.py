"""Fusion stage: confidence-weighted late fusion of audio and face, then EMA smoothing.

In:  per hop, the audio student's probabilities (or None when the window is not voiced or
     there is no audio), the face student's probabilities (or None when no face is in view),
     and optionally both students' common-space embeddings.
Out: `Fusion.update(...)` -> the smoothed fused probabilities over `Fusion.labels` (a view
     of a buffer overwritten on every call), or None when neither modality spoke this hop.

Each model's labels are mapped onto the fused label set (`calm` folds into `neutral`, see
`edge.settings.LABEL_ALIASES`). A modality's weight is its profile weight times its
confidence, 1 - normalized entropy of its distribution, so a flat, unsure modality counts
little. When the bundles carry class embeddings of the teacher's common (Soft-HGR) space,
the students' embeddings add a third opinion: softmax over classes of the score
`(w_a f_a + w_v f_v) . g(y)`, the maximal-correlation classifier of that space.
EMA smoothing uses a half-life in seconds, so it behaves the same at any hop length.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.settings import LABEL_ALIASES, LABELS


def fused_label_set(*label_sets: tuple[str, ...]) -> tuple[str, ...]:
    """Canonical order, every label any model knows, aliases folded (calm -> neutral)."""
    known = {LABEL_ALIASES.get(label, label) for labels in label_sets for label in labels}
    return tuple(label for label in (*LABELS, *sorted(known - set(LABELS))) if label in known)


def mapping_matrix(model_labels: tuple[str, ...], fused: tuple[str, ...]) -> np.ndarray:
    """[n_model, n_fused] 0/1 matrix: probs_fused = probs_model @ M."""
    m = np.zeros((len(model_labels), len(fused)), np.float32)
    for i, label in enumerate(model_labels):
        m[i, fused.index(LABEL_ALIASES.get(label, label))] = 1.0
    return m


def confidence(probs: np.ndarray) -> float:
    """1 - entropy / log(n): 1 for a one-hot distribution, 0 for a uniform one."""
    p = np.clip(probs, 1e-12, 1.0)
    return float(1.0 + (p * np.log(p)).sum() / np.log(len(p)))


@dataclass(frozen=True)
class CommonSpace:
    """Class embeddings g(y) [n_fused, D] of the teacher's Soft-HGR space, fused label order."""

    class_embeddings: np.ndarray
    temperature: float = 1.0


class Fusion:
    def __init__(self, audio_labels: tuple[str, ...], face_labels: tuple[str, ...],
                 audio_weight: float = 1.0, face_weight: float = 1.0, half_life_s: float = 1.0,
                 common: CommonSpace | None = None) -> None:
        self.labels = fused_label_set(audio_labels, face_labels)
        self.audio_map = mapping_matrix(audio_labels, self.labels)
        self.face_map = mapping_matrix(face_labels, self.labels)
        self.audio_weight, self.face_weight = audio_weight, face_weight
        self.half_life_s = half_life_s
        self.common = common
        n = len(self.labels)
        self.instant = np.zeros(n, np.float32)
        self.smoothed = np.zeros(n, np.float32)
        self._mapped = np.zeros(n, np.float32)
        self._scores = np.zeros(n, np.float32)
        self._last_t: float | None = None
        self.weights = {"audio": 0.0, "face": 0.0, "common": 0.0}

    def _add(self, probs: np.ndarray, mapping: np.ndarray, weight: float, name: str) -> float:
        np.matmul(probs, mapping, out=self._mapped)
        w = weight * confidence(self._mapped)
        self._mapped *= w
        self.instant += self._mapped
        self.weights[name] = w
        return w

    def _add_common(self, audio_emb: np.ndarray | None, face_emb: np.ndarray | None) -> float:
        g = self.common.class_embeddings
        self._scores[:] = 0.0
        for emb, w in ((audio_emb, self.audio_weight), (face_emb, self.face_weight)):
            if emb is not None:
                self._scores += w * (g @ emb)
        self._scores /= self.common.temperature
        self._scores -= self._scores.max()
        np.exp(self._scores, out=self._scores)
        self._scores /= self._scores.sum()
        return self._add(self._scores, np.eye(len(self.labels), dtype=np.float32), 1.0, "common")

    def update(self, t: float, audio_probs: np.ndarray | None, face_probs: np.ndarray | None,
               audio_emb: np.ndarray | None = None, face_emb: np.ndarray | None = None) -> np.ndarray | None:
        self.instant[:] = 0.0
        self.weights.update(audio=0.0, face=0.0, common=0.0)
        total = 0.0
        if audio_probs is not None:
            total += self._add(audio_probs, self.audio_map, self.audio_weight, "audio")
        if face_probs is not None:
            total += self._add(face_probs, self.face_map, self.face_weight, "face")
        if audio_probs is None and face_probs is None:
            return None
        if self.common is not None and (audio_emb is not None or face_emb is not None):
            total += self._add_common(audio_emb if audio_probs is not None else None,
                                      face_emb if face_probs is not None else None)
        if total <= 0.0:  # every modality was exactly uniform
            self.instant[:] = 1.0 / len(self.labels)
        else:
            self.instant /= total
        return self._smooth(t)

    def _smooth(self, t: float) -> np.ndarray:
        if self._last_t is None or self.half_life_s <= 0:
            self.smoothed[:] = self.instant
        else:
            alpha = 1.0 - 0.5 ** (max(t - self._last_t, 0.0) / self.half_life_s)
            self.smoothed *= 1.0 - alpha
            np.multiply(self.instant, alpha, out=self._mapped)
            self.smoothed += self._mapped
        self._last_t = t
        return self.smoothed

    @property
    def label(self) -> str:
        return self.labels[int(np.argmax(self.smoothed))]
