"""distill.data.synthetic: a real, deterministic data folder that is learnable but not trivial."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("soundfile")
pytest.importorskip("cv2")

from distill.data import load_corpus  # noqa: E402
from distill.data.cache import load_faces, load_waveforms  # noqa: E402
from distill.data.synthetic import make_synthetic_corpus  # noqa: E402
from edge.features import log_mel  # noqa: E402
from edge.settings import AUDIO  # noqa: E402

LABELS = ("neutral", "happy", "sad", "angry")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_synthetic_corpus(tmp_path_factory.mktemp("synth"), n_speakers=6, per_class=6, labels=LABELS)


def test_writes_a_data_folder(corpus):
    items = load_corpus(corpus)
    assert len(items) == 6 * 6 * len(LABELS)
    assert {it.label for it in items} == set(LABELS) and len({it.speaker for it in items}) == 6
    assert all(it.audio.endswith(".wav") and it.image.endswith(".png") and it.corpus == "synthetic" for it in items)
    wave = load_waveforms(items[:1], cache_dir=None)[0]
    assert wave.dtype == np.float32 and len(wave) == int(1.5 * AUDIO.sample_rate) and 0.05 < np.abs(wave).max() <= 1
    faces = load_faces(items[:3], cache_dir=None)
    assert faces.shape == (3, 48, 48) and faces.std() > 20


def test_deterministic_and_reused(corpus, tmp_path):
    again = make_synthetic_corpus(tmp_path / "again", n_speakers=6, per_class=6, labels=LABELS)
    for rel in ("labels.csv", "audio/synth03_sad_02.wav", "faces/synth05_angry_05.png"):
        assert (again / rel).read_bytes() == (corpus / rel).read_bytes()
    stamp = (again / "labels.csv").stat().st_mtime_ns
    make_synthetic_corpus(again, n_speakers=6, per_class=6, labels=LABELS)
    assert (again / "labels.csv").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="unknown labels"):
        make_synthetic_corpus(tmp_path / "bad", labels=("happy", "bored"))


def _nearest_centroid_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray) -> float:
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    centroids = np.stack([x[train & (y == c)].mean(0) for c in np.unique(y)])
    pred = np.argmin(((x[~train, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    return float((np.unique(y)[pred] == y[~train]).mean())


def test_learnable_across_speakers_but_not_trivial(corpus):
    items = load_corpus(corpus)
    y = np.array([LABELS.index(it.label) for it in items])
    train = np.array([it.speaker < "synth04" for it in items])  # 4 speakers train, 2 unseen test
    mels = [log_mel(w) for w in load_waveforms(items, cache_dir=None)]
    mel = np.stack([np.concatenate([m.mean(0), m.std(0)]) for m in mels])  # level + contour spread
    faces = load_faces(items, cache_dir=None).reshape(len(items), -1).astype(np.float32)
    chance = 1 / len(LABELS)
    for x in (mel, faces):
        acc = _nearest_centroid_accuracy(x, y, train)
        assert 1.4 * chance < acc < 0.9
