import numpy as np
import pytest

from edge.fusion import CommonSpace, Fusion, confidence, fused_label_set

AUDIO = ("neutral", "calm", "happy", "sad", "angry", "fear", "disgust", "surprise")
FACE = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def onehotish(labels, label, p=0.9):
    x = np.full(len(labels), (1 - p) / (len(labels) - 1), np.float32)
    x[labels.index(label)] = p
    return x


def test_label_set_folds_calm_into_neutral():
    assert fused_label_set(AUDIO, FACE) == ("neutral", "happy", "sad", "angry", "fear", "disgust", "surprise")
    f = Fusion(AUDIO, FACE, half_life_s=0)
    probs = f.update(0.0, onehotish(AUDIO, "calm", 0.99), None)
    assert f.label == "neutral" and probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_confidence_is_one_for_onehot_and_zero_for_uniform():
    assert confidence(np.eye(7, dtype=np.float32)[2]) == pytest.approx(1.0)
    assert confidence(np.full(7, 1 / 7, np.float32)) == pytest.approx(0.0, abs=1e-6)


def test_the_confident_modality_wins():
    f = Fusion(AUDIO, FACE, half_life_s=0)
    f.update(0.0, onehotish(AUDIO, "angry", 0.95), onehotish(FACE, "happy", 0.3))
    assert f.label == "angry"
    assert f.weights["audio"] > f.weights["face"] > 0


def test_missing_modality_falls_back_and_none_when_both_missing():
    f = Fusion(AUDIO, FACE, half_life_s=0)
    f.update(0.0, None, onehotish(FACE, "sad"))
    assert f.label == "sad" and f.weights["audio"] == 0
    assert f.update(0.5, None, None) is None
    assert f.label == "sad"  # the smoothed state is kept, not reset


def test_ema_half_life_is_in_seconds():
    for hop in (0.25, 0.5):
        f = Fusion(AUDIO, FACE, half_life_s=1.0)
        f.update(0.0, None, np.eye(7, dtype=np.float32)[FACE.index("happy")])
        t = 0.0
        while t < 1.0 - 1e-9:
            t += hop
            probs = f.update(t, None, np.eye(7, dtype=np.float32)[FACE.index("sad")])
        labels = f.labels
        assert probs[labels.index("happy")] == pytest.approx(0.5, abs=1e-4)
        assert probs[labels.index("sad")] == pytest.approx(0.5, abs=1e-4)


def test_common_space_embeddings_add_an_opinion():
    labels = fused_label_set(AUDIO, FACE)
    g = np.eye(len(labels), 4, dtype=np.float32) * 3  # class k <-> axis k (4 classes embedded)
    f = Fusion(AUDIO, FACE, half_life_s=0, common=CommonSpace(g))
    flat_audio = np.full(8, 1 / 8, np.float32)
    flat_audio[AUDIO.index("sad")] += 0.01
    flat_audio /= flat_audio.sum()
    emb = np.array([0, 0, 1, 0], np.float32)  # axis 2 = labels[2] = "sad"
    f.update(0.0, flat_audio, None, audio_emb=emb)
    assert f.weights["common"] > 0 and f.label == "sad"


def test_update_does_not_allocate_new_buffers():
    f = Fusion(AUDIO, FACE)
    a, v = onehotish(AUDIO, "happy"), onehotish(FACE, "happy")
    out1 = f.update(0.0, a, v)
    out2 = f.update(0.5, a, v)
    assert out1 is out2  # the same preallocated buffer every hop
