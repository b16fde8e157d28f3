"""distill/quantize.py: the export -> quantize -> bundle chain per firmware profile, on a tiny student."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import numpy_helper  # noqa: E402

from distill.export import export_onnx  # noqa: E402
from distill.models.students import AudioStudent, FaceStudent, fold_batchnorm  # noqa: E402
from distill.quantize import float_nodes, load_scheme, make_bundle  # noqa: E402
from edge.backends import installed_backends, open_session  # noqa: E402
from edge.bundle import load_bundle  # noqa: E402
from edge.errors import ConfigError  # noqa: E402

LABELS = ["neutral", "happy", "sad"]


def _manifest(modality):
    spec = ({"name": "waveform", "shape": [1, -1], "dtype": "float32", "window_s": 1.0,
             "frontend": {"sample_rate": 16000, "hop": 160, "n_fft": 320, "n_mels": 40, "fmin": 40.0,
                          "fmax": 8000.0, "log_floor": 1e-06}} if modality == "audio" else
            {"name": "face", "shape": [1, 1, 48, 48], "dtype": "float32",
             "face": {"size": 48, "margin": 0.1, "std_floor": 8.0}})
    return {"name": modality, "modality": modality, "labels": LABELS, "input": spec, "embedding_dim": 32,
            "metrics": {"split": "synthetic"}, "provenance": {"trained_on": "nothing (test)"}}


@pytest.fixture(scope="module")
def tiny_audio(tmp_path_factory):
    torch.manual_seed(0)
    model = fold_batchnorm(AudioStudent(n_labels=3, channels=(4, 8)))
    path = export_onnx(model, torch.zeros(1, 16000), tmp_path_factory.mktemp("f") / "a.onnx", "waveform",
                       dynamic_time_axis=True)
    rng = np.random.default_rng(0)
    calib = [(0.1 * rng.standard_normal((1, 16000))).astype(np.float32) for _ in range(8)]
    return path, calib


@pytest.mark.parametrize("target, expect", [
    ("jetson", dict(symmetric=True, reduce_range=False, per_channel=True, scheme="int8")),
    ("jetson-nano", dict(scheme="fp16")),
    ("x86", dict(reduce_range=True, symmetric=False, scheme="int8")),
    ("rpi4", dict(reduce_range=False, symmetric=False, scheme="int8")),
])
def test_profiles_give_the_documented_scheme(target, expect):
    scheme = load_scheme(target)
    for key, value in expect.items():
        assert getattr(scheme, key) == value, (target, key)


def test_unknown_target_names_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="unknown target 'pi9'.*rpi4"):
        load_scheme("pi9")
    (tmp_path / "bad.toml").write_text('[quantization]\nscheme = "int4"\n')
    with pytest.raises(ConfigError, match="bad.toml"):
        load_scheme("bad", tmp_path)


def _int8_model(folder):
    return onnx.load(str(folder / "model.int8.onnx"))


def _zero_points(model):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [inits[n.input[2]] for n in model.graph.node
            if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits]


def test_jetson_is_symmetric_int8_with_zero_points_zero(tiny_audio, tmp_path):
    path, calib = tiny_audio
    folder = make_bundle(path, tmp_path / "a", load_scheme("jetson"), calib, _manifest("audio"), check=(calib, None))
    zps = _zero_points(_int8_model(folder))
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["quantization"]["symmetric_activations"] is True
    assert manifest["quantization"]["target"] == "jetson-orin"
    assert manifest["agreement"]["numpy_vs_onnxruntime_argmax"] == 1.0


def test_front_end_and_stem_stay_float(tiny_audio, tmp_path):
    path, calib = tiny_audio
    names = float_nodes(path)
    body = [n for n in names if n.startswith("/body")]
    assert any("frontend" in n for n in names) and len(body) == 1 and body[0].endswith("Conv")
    folder = make_bundle(path, tmp_path / "a", load_scheme("rpi4"), calib, _manifest("audio"), check=(calib, None))
    agreement = json.loads((folder / "manifest.json").read_text())["agreement"]
    assert agreement["numpy_vs_onnxruntime_argmax"] == 1.0 and agreement["litert_vs_onnxruntime_argmax"] == 1.0
    model = _int8_model(folder)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert inits["frontend.mel"].dtype == np.float32
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert inits[convs[0].input[1]].dtype == np.float32   # the stem reads the float front end
    assert all(n.input[1] not in inits for n in convs[1:])   # later weights come from DequantizeLinear
    assert any(a.dtype == np.int8 and a.ndim == 4 for a in inits.values())


def test_x86_reduce_range_uses_7_bit_weights(tiny_audio, tmp_path):
    path, calib = tiny_audio
    folder = make_bundle(path, tmp_path / "a", load_scheme("x86"), calib, _manifest("audio"))
    weights = [numpy_helper.to_array(t) for t in _int8_model(folder).graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64


def test_nano_is_fp16_with_float32_io(tiny_audio, tmp_path):
    path, calib = tiny_audio
    folder = make_bundle(path, tmp_path / "a", load_scheme("jetson-nano"), calib, _manifest("audio"))
    model = onnx.load(str(folder / "model.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    bundle = load_bundle(folder)
    assert bundle.manifest["quantization"]["scheme"] == "fp16" and not bundle.has_payload("int8.onnx")
    out = open_session(bundle, "onnxruntime").run({"waveform": calib[0]})
    assert out["logits"].shape == (1, 3) and out["logits"].dtype == np.float32


def _tiny_face_onnx(tmp_path, seed: int):
    """A tiny face student exported to float ONNX, and 16 random crops to calibrate it on."""
    torch.manual_seed(seed)
    model = fold_batchnorm(FaceStudent(n_labels=3, blocks=((1, 8, 1, 1), (2, 16, 2, 2)), stem=8, head=32))
    path = export_onnx(model, torch.zeros(1, 1, 48, 48), tmp_path / "f.onnx", "face")
    rng = np.random.default_rng(0)
    return path, [rng.standard_normal((1, 1, 48, 48)).astype(np.float32) for _ in range(16)]


def test_face_bundle_runs_on_every_backend_with_one_top_label(tmp_path):
    path, calib = _tiny_face_onnx(tmp_path, 1)
    folder = make_bundle(path, tmp_path / "face", load_scheme("rpi4"), calib, _manifest("face"),
                         check=(calib, None))
    bundle = load_bundle(folder)
    tops = {name: int(np.argmax(open_session(bundle, name).run({"face": calib[0]})["logits"]))
            for name in installed_backends()}
    assert len(tops) >= 3 and len(set(tops.values())) == 1, tops


def test_mirror_averaging_face_bundle_records_agreement_as_the_runtime_answers(tmp_path):
    path, calib = _tiny_face_onnx(tmp_path, 2)
    symmetric = [np.concatenate([c[..., :24], c[..., :24][..., ::-1]], axis=-1) for c in calib]  # crop == its mirror
    manifest = _manifest("face")
    manifest["input"]["mirror_average"] = True
    folder = make_bundle(path, tmp_path / "face", load_scheme("rpi4"), symmetric, manifest,
                         check=(symmetric, None))
    agreement = json.loads((folder / "manifest.json").read_text())["agreement"]
    # on crops equal to their mirror image the runtime's mean answer is the single-crop answer
    assert agreement["int8_vs_float_argmax_as_runtime"] == agreement["int8_vs_float_argmax"]
    plain = make_bundle(path, tmp_path / "plain", load_scheme("rpi4"), symmetric, _manifest("face"),
                        check=(symmetric, None))
    assert "int8_vs_float_argmax_as_runtime" not in json.loads((plain / "manifest.json").read_text())["agreement"]


def test_zoom_views_bundle_is_answered_over_its_views_by_the_runtime(tmp_path):
    from edge.pipeline import Model
    from edge.views import FaceViews
    path, calib = _tiny_face_onnx(tmp_path, 3)
    manifest = _manifest("face")
    manifest["input"].update(mirror_average=True, zoom_views=[1.1])
    folder = make_bundle(path, tmp_path / "face", load_scheme("rpi4"), calib, manifest, check=(calib, None))
    bundle = load_bundle(folder)
    assert bundle.zoom_views == (1.1,)
    assert "int8_vs_float_argmax_as_runtime" in json.loads((folder / "manifest.json").read_text())["agreement"]
    session = open_session(bundle, "numpy")
    probs = [np.exp(session.run({"face": np.array(v)})["logits"][0]) for v in FaceViews(48, True, (1.1,))(calib[0])]
    expected = np.mean([p / p.sum() for p in probs], axis=0)
    np.testing.assert_allclose(Model(bundle, "numpy", ("numpy",), 1)(calib[0]), expected, rtol=1e-5, atol=1e-6)
