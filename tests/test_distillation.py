"""distill/distillation.py: augmentation, windows, losses and a tiny end-to-end fit on synthetic arrays."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import distill.distillation as distillation  # noqa: E402
from distill.distillation import (Arrays, FitConfig, audio_batch, audio_windows, augment_audio,  # noqa: E402
                                  class_weights, crop_samples, face_batch, fit, predict, standardize_faces,
                                  student_loss)
from distill.models.students import AudioStudent, FaceStudent  # noqa: E402
from edge.settings import AUDIO, FACE  # noqa: E402

LABELS = ["low", "high"]


def tone_corpus(n: int, seed: int) -> Arrays:
    """Two classes, 2.0-2.6 s long at a random level: a 300 Hz tone (random phase) or white
    noise. (The student pools over the mel axis, so a task told apart only by where a single
    tone sits, 300 Hz against 2.5 kHz, is not one a tiny net of it learns in a few epochs.)"""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(int(2.0 * AUDIO.sample_rate), int(2.6 * AUDIO.sample_rate), n)
    x = np.zeros((n, lengths.max()), np.float32)
    y = np.arange(n) % 2
    for i, (length, label) in enumerate(zip(lengths, y)):
        t = np.arange(length) / AUDIO.sample_rate
        signal = np.sin(2 * np.pi * 300 * t + rng.uniform(0, 6)) if label == 0 else rng.standard_normal(length) / 2
        x[i, :length] = rng.uniform(0.05, 0.5) * signal
    return Arrays(x=x, y=y.astype(np.int64), lengths=lengths)


def test_audio_windows_cover_the_utterance():
    n = crop_samples()
    assert n == 48000
    wave = np.arange(60000, dtype=np.float32)
    w = audio_windows(wave, 60000)
    assert w.shape[1] == n and w[0, 0] == 0 and w[-1, -1] == 59999
    short = audio_windows(wave, 1000)
    assert short.shape == (1, n) and short[0, 999] == 999 and not short[0, 1000:].any()


def test_audio_batch_shapes_and_range():
    data = tone_corpus(6, 0)
    batch = audio_batch(data, np.arange(6), np.random.default_rng(0), FitConfig(speed=0.1))
    assert batch.shape == (6, crop_samples())
    assert float(batch.abs().max()) <= 1.0 and float(batch.std()) > 0


def test_augment_audio_changes_the_signal_but_not_its_shape():
    wave = torch.from_numpy(tone_corpus(4, 1).x[:, :16000])
    out = augment_audio(wave, np.random.default_rng(3), FitConfig(noise_p=1.0, snr_db=(10.0, 10.0), gain_db=0.0))
    assert out.shape == wave.shape and not torch.allclose(out, wave)
    snr = 10 * torch.log10(wave.pow(2).mean(1) / (out - wave).pow(2).mean(1))
    assert torch.allclose(snr, torch.full((4,), 10.0), atol=0.2)   # noise at the asked SNR, before the clamp


def test_face_batch_is_standardized_per_crop():
    rng = np.random.default_rng(0)
    faces = Arrays(x=rng.uniform(0, 255, (5, 1, FACE.size, FACE.size)).astype(np.float32), y=np.zeros(5, np.int64))
    batch = face_batch(faces, np.arange(5), rng, FitConfig())
    assert batch.shape == (5, 1, FACE.size, FACE.size)
    assert torch.allclose(batch.mean(dim=(1, 2, 3)), torch.zeros(5), atol=1e-3)
    flat = standardize_faces(torch.full((1, 1, 4, 4), 100.0))
    assert torch.all(flat == 0)                      # std floor: a flat crop stays finite


def test_class_weights_balance_counts():
    w = class_weights(np.array([0, 0, 0, 1]), 3)
    assert w[1] == pytest.approx(3 * w[0]) and w[2] == 0 and w[:2].mean() == pytest.approx(1.0)
    half = class_weights(np.array([0, 0, 0, 0, 1]), 2, power=0.5)
    assert half[1] == pytest.approx(2 * half[0])
    assert torch.equal(class_weights(np.array([0, 0, 1]), 2, power=0.0), torch.ones(2))


def test_kd_terms_only_with_teacher_and_kd():
    torch.manual_seed(0)
    logits, emb = torch.randn(4, 2), torch.randn(4, 32)
    y = torch.tensor([0, 1, 0, 1])
    data = Arrays(x=np.zeros((4, 10), np.float32), y=y.numpy(), lengths=np.full(4, 10),
                  teacher_logits=np.array([[5, -5]] * 4, np.float32), teacher_emb=np.ones((4, 32), np.float32))
    w, idx = torch.ones(2), np.arange(4)
    plain = student_loss(logits, emb, y, Arrays(x=data.x, y=data.y, lengths=data.lengths), idx, w, FitConfig())
    no_kd = student_loss(logits, emb, y, data, idx, w, FitConfig(kd=False))
    with_kd = student_loss(logits, emb, y, data, idx, w, FitConfig())
    assert float(no_kd) == pytest.approx(float(plain))
    assert float(with_kd) > float(plain) + 0.5       # the embedding MSE alone is ~2


@pytest.mark.slow
def test_tiny_audio_fit_learns_and_keeps_best_epoch():
    torch.set_num_threads(1)
    train, val = tone_corpus(48, 1), tone_corpus(8, 2)
    torch.manual_seed(0)
    model = AudioStudent(n_labels=2, channels=(8, 16))
    cfg = FitConfig(epochs=8, batch=8, lr=5e-3, seed=0)
    model, history = fit(model, train, val, LABELS, cfg, log=lambda s: None)
    assert len(history) == 8 and not model.training
    assert max(h["val_uar"] for h in history) >= 0.75
    probs = predict(model, val)
    assert probs.shape == (8, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.mean(probs.argmax(1) == val.y) == pytest.approx(max(h["val_accuracy"] for h in history
                                                                  if h["val_uar"] == max(g["val_uar"] for g in history)))


def test_tiny_face_fit_with_teacher_targets_runs():
    rng = np.random.default_rng(0)
    n = 16
    x = rng.uniform(0, 255, (n, 1, FACE.size, FACE.size)).astype(np.float32)
    y = (np.arange(n) % 2).astype(np.int64)
    x[y == 1, :, :24] += 80                         # class 1 has a bright top half
    data = Arrays(x=x, y=y, teacher_logits=rng.standard_normal((n, 2)).astype(np.float32),
                  teacher_emb=rng.standard_normal((n, 32)).astype(np.float32))
    model = FaceStudent(n_labels=2, blocks=((1, 8, 1, 1), (2, 16, 1, 2)), stem=8, head=32)
    model, history = fit(model, data, Arrays(x=x, y=y), LABELS, FitConfig(epochs=2, batch=8), log=lambda s: None)
    assert len(history) == 2 and np.isfinite(history[-1]["loss"])


class Killed(Exception):
    """Stands for the process being killed right after a checkpoint was written."""


@pytest.mark.parametrize("kill_after_saves", [1, 3])   # 2 steps per epoch: 1 = inside epoch 1, 3 = after it
def test_a_stopped_run_resumes_to_the_same_weights(tmp_path, monkeypatch, kill_after_saves):
    """Checkpoint after every step, kill the run after some checkpoint (between or inside
    epochs), run the same call again: the result equals an uninterrupted run bit for bit
    (model, optimizer, schedule, both RNGs and the epoch's order and position were saved)."""
    torch.set_num_threads(1)
    monkeypatch.setattr(distillation, "CHECKPOINT_S", 0.0)
    train = tone_corpus(16, 3)
    cfg = FitConfig(epochs=3, batch=8, seed=1)

    def run(checkpoint=None):
        torch.manual_seed(5)
        return fit(AudioStudent(n_labels=2, channels=(8, 16)), train, None, LABELS, cfg, lambda s: None, checkpoint)

    whole, _ = run()
    ckpt, save, saves = tmp_path / "run.ckpt", distillation.save_state, []

    def save_then_die(*args):
        save(*args)
        saves.append(1)
        if len(saves) == kill_after_saves:
            raise Killed

    monkeypatch.setattr(distillation, "save_state", save_then_die)
    with pytest.raises(Killed):
        run(ckpt)
    monkeypatch.setattr(distillation, "save_state", save)
    resumed, history = run(ckpt)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
