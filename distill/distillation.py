"""Student training: class-balanced labels + teacher soft targets + common-space regression.

In:  `Arrays` per split. Audio: x float32 [N, L] zero-padded waveforms (16 kHz) with
     `lengths` [N]; face: x float32 [N, 1, S, S] gray 0..255 crops. y int64 [N].
     Optional teacher targets per item: `teacher_logits` [N, C], `teacher_emb` [N, D].
Out: `fit` -> the student (eval mode) at the epoch with the best validation UAR (or the last
     epoch when no validation split is given), and a history list of per-epoch dicts; a
     checkpoint file makes the run resumable. `predict` -> probabilities [N, C] (audio: mean
     over WINDOW_S windows hopped by 0.5 s; face: one crop).

Loss = (1 - soft) * CE(labels, class weights (1/count)**balance, label smoothing)
     + soft * CE(crowd label distribution)      (FitConfig.soft; FER+ votes for FER2013)
     - hgr * SoftHGR(embedding, label_embedding(label distribution))   (a teacher's common
       space, FitConfig.hgr; models with a label_embedding)
     + alpha * kd_loss(student logits, teacher logits, T) + beta * MSE(student embedding,
       teacher HGR embedding) / mean(teacher embedding^2)   (a scale-free regression; the
       last two terms only when teacher targets are given and kd is on)
     + qat * agreement_loss(float logits, fake-int8 logits of the same batch)   (distill/qat.py;
       only when FitConfig.qat > 0).
A speaker-normalized audio student (AudioStudent(speaker_norm=True)) gets a second input, the
speaker statistics [B, 2, n_mels] (`speaker_batch`; edge/speaker.py computes them), and is
scored causally per speaker (`predict(..., adapt=True)`) or on each window's own statistics.
Augmentation (train only, per batch, in torch): audio: random WINDOW_S crop, optional
speed/pitch change by resampling, additive white or pink noise at a random SNR, random gain
(FitConfig's audio fields); face: flip, small rotation/scale/shift, gamma and contrast, then the
runtime's per-crop standardization.

The loss and the loop only: the student recipes, their data and the students CLI are
distill/students.py (`python -m distill.train students ...`), the splits distill/corpora.py.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill.losses import kd_loss, soft_hgr
from distill.models.frontend import LogMelFrontEnd
from distill.qat import FakeQuant, agreement_loss
from edge.metrics import classification_report
from edge.features import n_frames, window_samples
from edge.speaker import SpeakerStats, band_stats, causal_order, moments
from edge.pipeline import MIN_AUDIO_S
from edge.settings import AUDIO, FACE

WINDOW_S = 3.0
"""Audio training crop and runtime window length (seconds; written into the bundle)."""
EVAL_HOP_S = 0.5
"""Hop between the WINDOW_S windows averaged to score a whole utterance."""


@dataclass(frozen=True)
class FitConfig:
    """Training hyper-parameters (defaults are the ones the shipped models used)."""

    epochs: int = 60
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-3
    label_smoothing: float = 0.05
    alpha: float = 0.5
    """Weight of the soft-target (KD) loss."""
    beta: float = 1.0
    """Weight of the embedding regression onto the teacher's common space."""
    temperature: float = 4.0
    seed: int = 0
    kd: bool = True
    """False trains from labels alone (the baseline), even when teacher targets exist."""
    max_minutes: float = 1e9
    """Stop after this much wall time (keeps the best epoch so far)."""
    balance: float = 1.0
    """Class weights are (1 / class count) ** balance: 1 balances fully, 0 not at all."""
    qat: float = 0.0
    """Weight of the float-vs-fake-int8 agreement loss (distill/qat.py); 0 trains float only."""
    speed: float = 0.0
    """Audio: random speed change of up to +-speed (resampling the crop)."""
    snr_db: tuple[float, float] = (5.0, 30.0)
    """Audio: range of the SNR of the added white or pink noise."""
    noise_p: float = 0.8
    """Audio: share of the crops that get noise."""
    gain_db: float = 10.0
    """Audio: random gain range (+-dB)."""
    partial_p: float = 0.0
    """Audio: share of the batches cut shorter than the window (a random length from
    MIN_AUDIO_S, the runtime's least audio on a voiced hop, up), as the runtime's first hops of a stream read only the audio so far."""
    soft: float = 0.0
    """Weight of the cross-entropy against the crowd label distributions (Arrays.soft); the
    original labels' cross-entropy gets 1 - soft."""
    hgr: float = 0.0
    """Weight of the Soft-HGR term between the embedding and the model's label embedding of the
    item's label distribution (a teacher's common space; models with `label_embedding`)."""
    speaker_p: float = 0.8
    """Audio students with speaker normalization: share of the items whose statistics pool the
    crop with a random 0..n-1 of the speaker's other training utterances (n: the speaker's
    utterances); the rest get the crop's own statistics (the runtime's answer before it has
    heard enough of a speaker, and with --no-adapt)."""


@dataclass
class Arrays:
    """One split, as arrays (module docstring)."""

    x: np.ndarray
    y: np.ndarray
    lengths: np.ndarray | None = None
    teacher_logits: np.ndarray | None = None
    teacher_emb: np.ndarray | None = None
    soft: np.ndarray | None = None
    """Crowd label distributions [N, C] (FER+ votes for FER2013 faces), if any."""
    speaker: np.ndarray | None = None
    """Audio: each item's speaker id (str [N]), for speaker statistics."""
    moments: np.ndarray | None = None
    """Audio: each utterance's log-mel moments float64 [N, 2, n_mels] (edge.speaker.moments),
    filled by `speaker_moments`."""
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def modality(self) -> str:
        return "audio" if self.x.ndim == 2 else "face"


# ---------------------------------------------------------------- audio batches

def crop_samples() -> int:
    """Samples in one training crop (the runtime window)."""
    return window_samples(WINDOW_S)


def _crop(x: np.ndarray, lengths: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros((len(x), n), np.float32)
    for i, (wave, length) in enumerate(zip(x, lengths)):
        if length >= n:
            start = rng.integers(0, length - n + 1)
            out[i] = wave[start:start + n]
        else:
            start = rng.integers(0, n - length + 1)
            out[i, start:start + length] = wave[:length]
    return out


def augment_audio(wave: torch.Tensor, rng: np.random.Generator, cfg: "FitConfig") -> torch.Tensor:
    """Additive white or pink noise at a random SNR (cfg.snr_db, on a cfg.noise_p share of the
    batch) and a random gain of +-cfg.gain_db, on a batch [B, T]."""
    b = wave.shape[0]
    noise = torch.from_numpy(rng.standard_normal(wave.shape).astype(np.float32))
    pink = torch.from_numpy(rng.random((b, 1)) < 0.5)
    noise = torch.where(pink, _pink(noise), noise)
    snr_db = torch.from_numpy(rng.uniform(*cfg.snr_db, (b, 1)).astype(np.float32))
    use = torch.from_numpy((rng.random((b, 1)) < cfg.noise_p).astype(np.float32))
    power = wave.pow(2).mean(1, keepdim=True) + 1e-8
    scale = torch.sqrt(power / (noise.pow(2).mean(1, keepdim=True) + 1e-8) / 10 ** (snr_db / 10))
    wave = wave + use * scale * noise
    gain = torch.from_numpy((10 ** (rng.uniform(-cfg.gain_db, cfg.gain_db, (b, 1)) / 20)).astype(np.float32))
    return torch.clamp(wave * gain, -1.0, 1.0)


def _pink(noise: torch.Tensor) -> torch.Tensor:
    """White noise [B, T] shaped to a 1/f power spectrum."""
    spectrum = torch.fft.rfft(noise, dim=1)
    f = torch.arange(spectrum.shape[1], dtype=torch.float32).clamp_min(1.0)
    return torch.fft.irfft(spectrum / torch.sqrt(f), n=noise.shape[1], dim=1)


def audio_batch(data: Arrays, idx: np.ndarray, rng: np.random.Generator, cfg: "FitConfig") -> torch.Tensor:
    """Random crops of WINDOW_S (on a cfg.partial_p share of batches a shorter length, the same
    for the whole batch), resampled by a random speed factor (cfg.speed), then augmented."""
    return augment_audio(audio_crops(data, idx, rng, cfg), rng, cfg)


def audio_crops(data: Arrays, idx: np.ndarray, rng: np.random.Generator, cfg: "FitConfig") -> torch.Tensor:
    """`audio_batch` before augmentation."""
    n = crop_samples()
    if rng.random() < cfg.partial_p:
        n = int(rng.integers(window_samples(MIN_AUDIO_S) // AUDIO.hop, n // AUDIO.hop + 1)) * AUDIO.hop
    speed = rng.uniform(1.0 - cfg.speed, 1.0 + cfg.speed)
    src = int(round(n * speed))
    crops = torch.from_numpy(_crop(data.x[idx], data.lengths[idx], src, rng))
    if src != n:
        crops = F.interpolate(crops[:, None], size=n, mode="linear", align_corners=False)[:, 0]
    return crops


# ---------------------------------------------------------------- speaker statistics

def speaker_moments(data: Arrays) -> np.ndarray:
    """Each utterance's log-mel moments [N, 2, n_mels] (computed once into data.moments)."""
    if data.moments is None:
        data.moments = np.concatenate([wave_moments(torch.from_numpy(w[None, :n])) for w, n in zip(data.x, data.lengths)])
    return data.moments


@torch.no_grad()
def wave_moments(wave: torch.Tensor) -> np.ndarray:
    """Log-mel moments of each waveform of a batch [B, T] -> [B, 2, n_mels]. The log-mel is the
    students' in-model front end (the torch twin of edge.features.log_mel, tests/test_frontend.py):
    batched, several times faster than numpy's per-item FFTs."""
    global _FRONTEND
    _FRONTEND = _FRONTEND or LogMelFrontEnd()
    return np.stack([moments(m) for m in _FRONTEND(wave).numpy()])


_FRONTEND: nn.Module | None = None


def shift_moments(sums: np.ndarray, count: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Moments [..., 2, M] of `count` frames with `shift` [..., M] added to every frame."""
    out = sums.copy()
    out[..., 0, :] += count[..., None] * shift
    out[..., 1, :] += 2.0 * shift * sums[..., 0, :] + count[..., None] * shift * shift
    return out


def speaker_batch(data: Arrays, idx: np.ndarray, rng: np.random.Generator,
                  cfg: "FitConfig") -> tuple[torch.Tensor, torch.Tensor]:
    """(augmented crops [B, T], speaker statistics [B, 2, n_mels]). Each item's statistics are
    the crop's own, pooled on a cfg.speaker_p share with k - 1 other utterances of its speaker
    (k uniform in 1..n). The others are shifted per band by what augmentation did to this
    crop's band means (gain and noise stay constant over a live speaker's utterances)."""
    clean = audio_crops(data, idx, rng, cfg)
    wave = augment_audio(clean, rng, cfg)
    own = wave_moments(wave)
    frames = n_frames(wave.shape[1])
    sums, count = own.copy(), np.full(len(idx), float(frames))
    shift = (own[:, 0] - wave_moments(clean)[:, 0]) / frames
    every = speaker_moments(data)
    for j in np.flatnonzero(rng.random(len(idx)) < cfg.speaker_p):
        pool = np.flatnonzero((data.speaker == data.speaker[idx[j]]) & (np.arange(len(data)) != idx[j]))
        others = rng.choice(pool, int(rng.integers(0, len(pool) + 1)), replace=False)
        n = float(sum(n_frames(int(data.lengths[i])) for i in others))
        sums[j] += shift_moments(every[others].sum(0), np.array(n), shift[j])
        count[j] += n
    return wave, torch.from_numpy(band_stats(sums, count))


def audio_windows(wave: np.ndarray, length: int) -> np.ndarray:
    """The WINDOW_S windows (hop 0.5 s) covering one utterance, zero-padded if shorter, [W, n]."""
    n, hop = crop_samples(), int(EVAL_HOP_S * AUDIO.sample_rate)
    if length <= n:
        out = np.zeros((1, n), np.float32)
        out[0, :length] = wave[:length]
        return out
    starts = list(range(0, length - n + 1, hop))
    if starts[-1] != length - n:
        starts.append(length - n)
    return np.stack([wave[s:s + n] for s in starts]).astype(np.float32)


# ---------------------------------------------------------------- face batches

def standardize_faces(x: torch.Tensor) -> torch.Tensor:
    """The runtime's crop standardization: (x - mean) / max(std, std_floor), per crop."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (x - mean) / torch.clamp(std, min=FACE.std_floor)


def augment_faces(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Flip, rotation +-12 deg, scale 0.9-1.1, shift +-8 %, gamma and contrast, [B,1,S,S]."""
    b = x.shape[0]
    flip = torch.from_numpy(np.where(rng.random(b) < 0.5, -1.0, 1.0).astype(np.float32))
    ang = torch.from_numpy(np.deg2rad(rng.uniform(-12, 12, b)).astype(np.float32))
    scale = torch.from_numpy(rng.uniform(0.9, 1.1, b).astype(np.float32))
    shift = torch.from_numpy(rng.uniform(-0.08, 0.08, (b, 2)).astype(np.float32))
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.cos(ang) / scale * flip
    theta[:, 0, 1] = -torch.sin(ang) / scale
    theta[:, 1, 0] = torch.sin(ang) / scale * flip
    theta[:, 1, 1] = torch.cos(ang) / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    gamma = torch.from_numpy(rng.uniform(0.7, 1.4, (b, 1, 1, 1)).astype(np.float32))
    x = 255.0 * (x.clamp(0, 255) / 255.0) ** gamma
    contrast = torch.from_numpy(rng.uniform(0.7, 1.3, (b, 1, 1, 1)).astype(np.float32))
    return (x - 128.0) * contrast + 128.0


def face_batch(data: Arrays, idx: np.ndarray, rng: np.random.Generator, cfg: "FitConfig") -> torch.Tensor:
    return standardize_faces(augment_faces(torch.from_numpy(data.x[idx]), rng))


# ---------------------------------------------------------------- training

def class_weights(y: np.ndarray, n_classes: int, power: float = 1.0) -> torch.Tensor:
    """Inverse-frequency weights raised to `power`, mean 1 over the classes present. Full
    balancing (power 1) slowed FER2013 training several-fold (disgust weighs 16x happy);
    power 0.5 learns about as fast as no weighting and still lifts the rare classes."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1) ** power, 0.0)
    return torch.tensor(w / w[counts > 0].mean(), dtype=torch.float32)


def student_loss(logits: torch.Tensor, emb: torch.Tensor, y: torch.Tensor, data: Arrays,
                 idx: np.ndarray, weights: torch.Tensor, cfg: FitConfig) -> torch.Tensor:
    """CE (original and crowd labels) + alpha * KD + beta * embedding MSE (module docstring)."""
    on_device = lambda a: torch.from_numpy(a).to(logits.device)  # noqa: E731
    loss = F.cross_entropy(logits, y, weight=weights, label_smoothing=cfg.label_smoothing)
    if cfg.soft > 0 and data.soft is not None:
        crowd = -(on_device(data.soft[idx]) * F.log_softmax(logits, 1)).sum(1).mean()
        loss = (1 - cfg.soft) * loss + cfg.soft * crowd
    if cfg.kd and data.teacher_logits is not None:
        t_logits = on_device(data.teacher_logits[idx])
        loss = loss + cfg.alpha * kd_loss(logits, t_logits, cfg.temperature)
    if cfg.kd and data.teacher_emb is not None:
        target = on_device(data.teacher_emb[idx])
        loss = loss + cfg.beta * F.mse_loss(emb, target) / target.pow(2).mean().clamp_min(1e-6)
    return loss


def label_distribution(data: Arrays, idx: np.ndarray, n_labels: int) -> torch.Tensor:
    """The items' crowd label distributions, else their labels one-hot, [B, C]."""
    if data.soft is not None:
        return torch.from_numpy(data.soft[idx])
    return F.one_hot(torch.from_numpy(data.y[idx]), n_labels).float()


def batcher(data: Arrays, model: nn.Module) -> Callable[[Arrays, np.ndarray, np.random.Generator, FitConfig], Batch]:
    if data.modality == "face":
        return face_batch
    return speaker_batch if getattr(model, "speaker_norm", False) else audio_batch


Batch = torch.Tensor | tuple[torch.Tensor, ...]
"""A model's inputs for one batch: one tensor, or a tuple (waveform, speaker statistics)."""


def forward(model: nn.Module, x: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    return model(*x) if isinstance(x, tuple) else model(x)


def batch_to(x: Batch, device: torch.device) -> Batch:
    return tuple(t.to(device) for t in x) if isinstance(x, tuple) else x.to(device)


def train_epoch(model: nn.Module, data: Arrays, opt: torch.optim.Optimizer,
                sched: torch.optim.lr_scheduler.LRScheduler, cfg: FitConfig, state: "TrainState",
                weights: torch.Tensor, quant: FakeQuant | None = None,
                tick: Callable[[], None] = lambda: None) -> float:
    """One epoch over `state.order` from batch `state.step` on (a resumed epoch continues where
    it stopped); `tick()` runs after every step (the checkpoint clock). Returns the mean loss."""
    model.train()
    make, device = batcher(data, model), next(model.parameters()).device
    starts = range(0, len(state.order) - cfg.batch + 1, cfg.batch)
    for start in starts[state.step:]:
        idx = np.sort(state.order[start:start + cfg.batch])
        x = batch_to(make(data, idx, state.rng, cfg), device)
        masks = torch.get_rng_state() if quant is not None else None
        logits, emb = forward(model, x)
        loss = student_loss(logits, emb, torch.from_numpy(data.y[idx]).to(device), data, idx, weights, cfg)
        if cfg.hgr > 0:
            crowd = label_distribution(data, idx, len(weights)).to(device)
            loss = loss - cfg.hgr * soft_hgr(emb, model.label_embedding(crowd))
        if quant is not None:
            torch.set_rng_state(masks)  # the same dropout and SpecAugment masks in both passes
            with quant.enabled():
                loss = loss + cfg.qat * agreement_loss(logits, forward(model, x)[0])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        state.step, state.loss_sum = state.step + 1, state.loss_sum + loss.item() * len(idx)
        tick()
    return state.loss_sum / max(1, len(state.order))


def predict(model: nn.Module, data: Arrays, batch: int = 256, adapt: bool = True) -> np.ndarray:
    """Class probabilities [N, C] (audio: mean over the utterance's WINDOW_S windows)."""
    return predict_with_embedding(model, data, batch, adapt)[0]


@torch.no_grad()
def predict_with_embedding(model: nn.Module, data: Arrays, batch: int = 256,
                           adapt: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, C], embeddings [N, D]); audio: both averaged over the windows. A
    speaker-normalized student gets, with `adapt`, its speaker's statistics over the utterances
    played so far, each speaker's in `causal_order` (as a live device hears them); without it,
    each window's own."""
    model.eval()
    device = next(model.parameters()).device
    if data.modality == "face":
        x = torch.from_numpy(data.x)
        outs = [model(standardize_faces(x[i:i + batch]).to(device)) for i in range(0, len(x), batch)]
        return (torch.cat([torch.softmax(o[0], 1) for o in outs]).cpu().numpy(),
                torch.cat([o[1] for o in outs]).cpu().numpy())
    stats = speaker_inputs(data, adapt) if getattr(model, "speaker_norm", False) else None
    probs, embs = [], []
    for i, (wave, length) in enumerate(zip(data.x, data.lengths)):
        windows = torch.from_numpy(audio_windows(wave, int(length)))
        x = windows if stats is None else (windows, stats(i, windows))
        logits, emb = forward(model, batch_to(x, device))
        probs.append(torch.softmax(logits, 1).mean(0).cpu().numpy())
        embs.append(emb.mean(0).cpu().numpy())
    return np.stack(probs), np.stack(embs)


def speaker_inputs(data: Arrays, adapt: bool) -> Callable[[int, torch.Tensor], torch.Tensor]:
    """(item, its windows [W, T]) -> statistics [W, 2, n_mels]: with `adapt` the speaker's over
    its utterances up to this one in `causal_order`, else each window's own (its audio only)."""
    if not adapt:
        return lambda i, w: torch.from_numpy(own_stats(w[:, :int(data.lengths[i])]))
    causal = causal_stats(data)
    return lambda i, w: torch.from_numpy(causal[i][None]).expand(len(w), -1, -1)


def own_stats(wave: torch.Tensor) -> np.ndarray:
    """Each waveform's own statistics [B, 2, n_mels] (waveforms [B, T])."""
    return band_stats(wave_moments(wave), np.full(len(wave), float(n_frames(wave.shape[1]))))


def causal_stats(data: Arrays) -> np.ndarray:
    """[N, 2, n_mels]: item i's speaker's statistics over that speaker's utterances played up to
    and including i, in `causal_order`."""
    every = speaker_moments(data)
    out = np.zeros(every.shape, np.float32)
    heard: dict[str, SpeakerStats] = {}
    for i in causal_order(list(data.speaker)):
        stats = heard.setdefault(data.speaker[i], SpeakerStats())
        stats.add_moments(every[i], n_frames(int(data.lengths[i])))
        out[i] = stats.stats()[0]
    return out


def evaluate(model: nn.Module, data: Arrays, labels: list[str]) -> dict:
    """classification_report on `data` (accuracy, UAR, macro-F1, confusion)."""
    pred = predict(model, data).argmax(1)
    return classification_report([labels[i] for i in data.y], [labels[i] for i in pred], labels)


def fit(model: nn.Module, train: Arrays, val: Arrays | None, labels: list[str], cfg: FitConfig,
        log: Callable[[str], None] = print, checkpoint: Path | None = None,
        device: str = "cpu") -> tuple[nn.Module, list[dict]]:
    """Train `model` on `train`; with `val`, keep the epoch with the best validation UAR, without
    it the last epoch (a fixed epoch count). With `checkpoint`, the whole training state is saved
    there every CHECKPOINT_S (also inside an epoch) and at the end, and a run started again
    resumes from it, to the same weights as a run never stopped (on a GPU, `device` "cuda",
    dropout draws from the GPU's generator, which is not saved: a resumed GPU run differs)."""
    torch.manual_seed(cfg.seed)
    model.to(device)
    steps = max(1, len(train) // cfg.batch) * cfg.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps,
                                                pct_start=0.15)
    state = TrainState(rng=np.random.default_rng(cfg.seed))
    if checkpoint is not None and checkpoint.is_file():
        state = resume(checkpoint, model, opt, sched)
        log(f"resumed {checkpoint} at epoch {state.epoch + 1}, step {state.step}")
    weights = class_weights(train.y, len(labels), cfg.balance).to(device)
    quant = FakeQuant(model) if cfg.qat > 0 else None
    t0, saved = time.time() - state.minutes * 60, [time.time()]

    def tick(force: bool = False) -> None:
        if checkpoint is not None and (force or time.time() - saved[0] > CHECKPOINT_S):
            state.minutes = (time.time() - t0) / 60
            save_state(checkpoint, state, model, opt, sched)
            saved[0] = time.time()

    for epoch in range(state.epoch, cfg.epochs):
        if state.order is None:
            state.order, state.step, state.loss_sum = state.rng.permutation(len(train)), 0, 0.0
        loss = train_epoch(model, train, opt, sched, cfg, state, weights, quant, tick)
        entry = {"epoch": epoch + 1, "loss": loss, "minutes": (time.time() - t0) / 60}
        if val is not None:
            report = evaluate(model, val, labels)
            entry.update(val_uar=report["uar"], val_accuracy=report["accuracy"])
            if report["uar"] > state.best:
                state.best, state.best_state = report["uar"], {k: v.clone() for k, v in model.state_dict().items()}
        state.history.append(entry)
        state.epoch, state.order = epoch + 1, None
        log(f"epoch {epoch + 1}/{cfg.epochs} loss {loss:.4f}" + (
            f" val UAR {entry['val_uar']:.4f} acc {entry['val_accuracy']:.4f}" if val is not None else "")
            + f" ({entry['minutes']:.1f} min)")
        tick(force=state.epoch == cfg.epochs)
        if entry["minutes"] > cfg.max_minutes:
            log(f"stopping: {cfg.max_minutes} min budget reached")
            tick(force=True)
            break
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    if quant is not None:
        quant.remove()
    return model.cpu().eval(), state.history


CHECKPOINT_S = 300.0
"""Seconds between training-state checkpoints (a stopped run loses at most this much)."""


@dataclass
class TrainState:
    """What a resumed run needs besides the model, optimizer and schedule."""

    rng: np.random.Generator
    epoch: int = 0
    """Epochs finished."""
    order: np.ndarray | None = None
    """The running epoch's item order (None between epochs)."""
    step: int = 0
    """Batches of the running epoch done."""
    loss_sum: float = 0.0
    minutes: float = 0.0
    best: float = -1.0
    best_state: dict | None = None
    history: list = field(default_factory=list)


def save_state(path: Path, state: TrainState, model: nn.Module, opt: torch.optim.Optimizer,
               sched: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Model, optimizer, schedule, both RNGs, epoch and history, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    kept = {f.name: getattr(state, f.name) for f in fields(TrainState) if f.name != "rng"}
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "torch_rng": torch.get_rng_state(), "rng": state.rng.bit_generator.state, **kept}, tmp)
    os.replace(tmp, path)


def resume(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
           sched: torch.optim.lr_scheduler.LRScheduler) -> TrainState:
    """Load what `save_state` wrote into model/opt/sched; returns the rest."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    sched.load_state_dict(ckpt["sched"])
    torch.set_rng_state(ckpt["torch_rng"])
    rng = np.random.default_rng()
    rng.bit_generator.state = ckpt["rng"]
    return TrainState(rng=rng, **{f.name: ckpt[f.name] for f in fields(TrainState) if f.name != "rng"})
