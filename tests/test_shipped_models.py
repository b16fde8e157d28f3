"""edge/models/{audio,face}: the shipped bundles load, fit their size budgets, carry their
measurements, and every installed backend gives the same top label on a fixed input."""
import numpy as np
import pytest

from edge.backends import REGISTRY, installed_backends, open_session
from edge.bundle import MODELS_DIR, load_bundle
from edge.settings import AUDIO, FACE

INT8_LIMIT = {"audio": 150_000, "face": 1_000_000}
"""Bytes of model.int8.onnx (issue 5: audio <= 150 KB, face <= 1 MB)."""
PAYLOAD_OF = {"numpy": "npz", "onnxruntime": "int8.onnx", "litert": "tflite"}


def fixed_waveform(seconds: float = 2.0) -> np.ndarray:
    """A voice-like test signal: a gliding 140-220 Hz pulse train with 12 harmonics, plus noise."""
    t = np.arange(int(seconds * AUDIO.sample_rate)) / AUDIO.sample_rate
    phase = 2 * np.pi * np.cumsum(140 + 80 * t / seconds) / AUDIO.sample_rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 13)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    wave += 0.01 * np.random.default_rng(0).standard_normal(len(t))
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)[None]


def fixed_face() -> np.ndarray:
    """A drawn face (oval, eyes, mouth) standardized the way the runtime does, [1, 1, S, S]."""
    s = FACE.size
    y, x = np.mgrid[:s, :s] / s
    img = 90 + 110 * (((x - 0.5) / 0.38) ** 2 + ((y - 0.5) / 0.48) ** 2 < 1)
    for cx in (0.35, 0.65):
        img = np.where((x - cx) ** 2 + (y - 0.4) ** 2 < 0.004, 30, img)
    img = np.where((np.abs(y - 0.72) < 0.03) & (np.abs(x - 0.5) < 0.15), 50, img).astype(np.float32)
    return ((img - img.mean()) / max(img.std(), FACE.std_floor))[None, None].astype(np.float32)


INPUTS = {"audio": fixed_waveform, "face": fixed_face}


@pytest.fixture(scope="module", params=["audio", "face"])
def bundle(request):
    return load_bundle(MODELS_DIR / request.param)


def test_bundle_is_complete_and_small(bundle):
    for kind in ("onnx", "int8.onnx", "npz", "tflite"):
        assert bundle.has_payload(kind), kind
    assert bundle.payload("int8.onnx").stat().st_size <= INT8_LIMIT[bundle.modality]
    assert bundle.embedding_dim == 32


def test_manifest_carries_measurements(bundle):
    m = bundle.manifest
    for key in ("accuracy", "uar", "macro_f1", "split"):
        assert key in m["metrics"], key
    assert 0.0 < m["metrics"]["uar"] <= 1.0
    assert m["agreement"]["numpy_vs_onnxruntime_argmax"] >= 0.99   # goal 1.0; 1-LSB output ties can flip argmax
    assert m["agreement"]["int8_vs_float_argmax"] >= 0.95
    assert m["agreement"]["litert_vs_onnxruntime_argmax"] >= 0.99
    assert m["provenance"]["trained_on"] and m["provenance"]["teacher"]


def test_every_installed_backend_gives_the_same_top_label(bundle):
    x = INPUTS[bundle.modality]()
    names = [n for n in installed_backends() if bundle.has_payload(PAYLOAD_OF[n])]
    assert "numpy" in names
    outputs = {n: open_session(bundle, n).run({bundle.input_name: x}) for n in names}
    tops = {n: int(np.argmax(o["logits"])) for n, o in outputs.items()}
    assert len(set(tops.values())) == 1, tops
    for out in outputs.values():
        assert out["logits"].shape == (1, len(bundle.labels))
        assert out["embedding"].shape == (1, bundle.embedding_dim)


def test_audio_runs_on_other_window_lengths():
    bundle = load_bundle(MODELS_DIR / "audio")
    sess = open_session(bundle, "numpy")
    for seconds in (1.0, 3.0):
        assert sess.run({"waveform": fixed_waveform(seconds)})["logits"].shape == (1, len(bundle.labels))


def test_registry_knows_every_payload_kind():
    assert set(PAYLOAD_OF) == set(REGISTRY)


def test_face_model_answers_the_mean_over_its_views():
    """The shipped face bundle averages the crop, its centre enlarged (input.zoom_views) and the
    mirror image of each (its metrics are measured so)."""
    from edge.pipeline import Model
    from edge.views import zoom_matrix
    bundle = load_bundle(MODELS_DIR / "face")
    assert bundle.mirror_average and bundle.manifest["input"]["mirror_average"] is True
    x = fixed_face()
    x[..., : FACE.size // 2] += 0.5  # make the crop asymmetric
    zoomed = [zoom_matrix(FACE.size, z) @ x[0, 0] @ zoom_matrix(FACE.size, z).T for z in bundle.zoom_views]
    views = [x, *(z[None, None] for z in zoomed)]
    views += [v[..., ::-1] for v in views]
    session = open_session(bundle, "numpy")
    probs = [np.exp(session.run({bundle.input_name: np.ascontiguousarray(v, np.float32)})["logits"][0]) for v in views]
    expected = np.mean([p / p.sum() for p in probs], axis=0)
    np.testing.assert_allclose(Model(bundle, "numpy", ("numpy",), 1)(x), expected, rtol=1e-5, atol=1e-6)
