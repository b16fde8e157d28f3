"""distill/tflite.py: int8 QDQ ONNX -> LiteRT .tflite agrees with onnxruntime on the int8 ONNX
(tiny seeded bundles, the shipped bundles on real media, the runtime's litert backend, the
`tflite = true` quantization path)."""
import shutil

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import helper, numpy_helper  # noqa: E402

from conftest import DEMO_WAV, PORTRAIT, shipped  # noqa: E402
from distill.tflite import onnx_to_tflite  # noqa: E402
from edge.backends import open_session  # noqa: E402
from edge.bundle import load_bundle, write_manifest  # noqa: E402
from edge.settings import AUDIO  # noqa: E402

STEPS = 2
"""Allowed |LiteRT - onnxruntime| on a logit, in output quantization steps (kernels round differently)."""


def _interpreter(path):
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    return it


def _run_litert(it, x):
    d = it.get_input_details()[0]
    if tuple(d["shape"]) != x.shape:
        it.resize_tensor_input(d["index"], list(x.shape))
        it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return {o["name"]: it.get_tensor(o["index"]).copy() for o in it.get_output_details()}


def _output_scale(int8_onnx, name="logits"):
    graph = onnx.load(str(int8_onnx)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    node = next(n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] == name)
    return float(inits[node.input[1]])


def assert_agrees(int8_onnx, tflite, inputs):
    """Per input: logits within STEPS output steps, and the same argmax unless onnxruntime's
    top two are closer than that (a tie LiteRT may break the other way)."""
    sess = ort.InferenceSession(str(int8_onnx), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    it, step = _interpreter(tflite), _output_scale(int8_onnx)
    for x in inputs:
        ref = dict(zip(["logits", "embedding"], sess.run(["logits", "embedding"], {name: x})))
        got = _run_litert(it, x)
        assert got["logits"].shape == ref["logits"].shape and got["embedding"].shape == ref["embedding"].shape
        assert np.abs(got["logits"] - ref["logits"]).max() <= STEPS * step * 1.001, x.shape
        top2 = np.sort(ref["logits"][0])[-2:]
        if top2[1] - top2[0] > STEPS * step:
            assert np.argmax(got["logits"]) == np.argmax(ref["logits"])


def portrait_crops():
    """Standardized 48x48 crops of the shipped portrait at a few offsets and scales."""
    cv2 = pytest.importorskip("cv2")
    from edge.face import FaceCropper
    gray = cv2.imread(str(PORTRAIT), cv2.IMREAD_GRAYSCALE)
    h, w = gray.shape
    crops = []
    for side in (0.45, 0.6, 0.8):
        for dx, dy in ((0, 0), (-0.05, 0.03), (0.06, -0.04)):
            s = int(side * min(h, w))
            x, y = int((w - s) / 2 + dx * w), int((h - s) / 2 + dy * h)
            crops.append(FaceCropper().crop(gray, (x, y, s, s)).copy())
    return crops


def demo_windows(seconds=(2.0, 2.0, 2.0, 1.0, 0.5)):
    """Windows of edge/assets/demo.wav, the lengths the runtime feeds (2 s; shorter at start)."""
    from edge.audio import read_audio
    wave = read_audio(DEMO_WAV)
    out, at = [], 0
    for s in seconds:
        n = int(s * AUDIO.sample_rate) // AUDIO.hop * AUDIO.hop
        out.append(wave[at:at + n][None].astype(np.float32))
        at = (at + 24000) % max(1, len(wave) - n)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")
    from tiny_models import make_audio_bundle, make_face_bundle
    root = tmp_path_factory.mktemp("tiny")
    return {"face": make_face_bundle(root / "face"), "audio": make_audio_bundle(root / "audio")}


def _seeded(shape, n, scale, seed=3):
    rng = np.random.default_rng(seed)
    return [(scale * rng.standard_normal(shape)).astype(np.float32) for _ in range(n)]


def test_tiny_face_bundle(tiny, tmp_path):
    src = tiny["face"] / "model.int8.onnx"
    tfl = onnx_to_tflite(src, tmp_path / "model.tflite")
    assert_agrees(src, tfl, _seeded((1, 1, 48, 48), 8, 1.0))


def test_tiny_audio_bundle_any_length(tiny, tmp_path):
    src = tiny["audio"] / "model.int8.onnx"
    tfl = onnx_to_tflite(src, tmp_path / "model.tflite")
    sig = _interpreter(tfl).get_input_details()[0]["shape_signature"]
    assert list(sig) == [1, -1]
    inputs = [x for n in (8000, 32000, 12800) for x in _seeded((1, n), 2, 0.1)]
    assert_agrees(src, tfl, inputs)


def test_fixed_input_shape(tiny, tmp_path):
    tfl = onnx_to_tflite(tiny["audio"] / "model.int8.onnx", tmp_path / "model.tflite", fixed_input_shape=[1, 32000])
    d = _interpreter(tfl).get_input_details()[0]
    assert list(d["shape"]) == list(d["shape_signature"]) == [1, 32000]
    with pytest.raises(ValueError, match="does not fit"):
        onnx_to_tflite(tiny["face"] / "model.int8.onnx", tmp_path / "x.tflite", fixed_input_shape=[1, 1, 32, 32])


def test_symmetric_int8_activations(tmp_path):
    """The TensorRT scheme (int8 activations, zero point 0) converts too."""
    pytest.importorskip("torch")
    from tiny_models import TinyFace, quantized_model, seeded
    paths = quantized_model(tmp_path / "m", seeded(TinyFace, 5), (1, 1, 48, 48), symmetric_activations=True)
    tfl = onnx_to_tflite(paths["int8.onnx"], tmp_path / "model.tflite")
    assert_agrees(paths["int8.onnx"], tfl, _seeded((1, 1, 48, 48), 6, 1.0))


def test_unsupported_op_names_the_node(tmp_path):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Exp", ["x"], ["y"], name="my_exp")], "g", [x], [y])
    path = tmp_path / "exp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(NotImplementedError, match="my_exp.*Exp"):
        onnx_to_tflite(path, tmp_path / "exp.tflite")


def _upsample_graph(tmp_path, quantized: bool):
    """x [1, 3, 5, 4] -> (QDQ) -> Resize nearest x2 (asymmetric, floor) -> (QDQ) -> Sigmoid -> y:
    the detector's feature-pyramid upsample and score activation, float or between int8 tensors."""
    init = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
            numpy_helper.from_array(np.array(0.05, np.float32), "s"),
            numpy_helper.from_array(np.array(120, np.uint8), "z")]
    nodes, src = [], "x"
    if quantized:
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"])]
        src = "xd"
    nodes.append(helper.make_node("Resize", [src, "", "scales"], ["up"], mode="nearest",
                                  coordinate_transformation_mode="asymmetric", nearest_mode="floor", name="up"))
    if quantized:
        nodes += [helper.make_node("QuantizeLinear", ["up", "s", "z"], ["uq"]),
                  helper.make_node("DequantizeLinear", ["uq", "s", "z"], ["ud"])]
    nodes.append(helper.make_node("Sigmoid", ["ud" if quantized else "up"], ["y"], name="score"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 5, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 10, 8])], init)
    path = tmp_path / f"up{int(quantized)}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("quantized", [False, True])
def test_resize_nearest_and_sigmoid(tmp_path, quantized):
    path = _upsample_graph(tmp_path, quantized)
    tfl = onnx_to_tflite(path, tmp_path / "up.tflite")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    it = _interpreter(tfl)
    ops = {it._get_op_details(i)["op_name"] for i in range(len(it._get_ops_details()))}
    assert {"RESIZE_NEAREST_NEIGHBOR", "LOGISTIC"} <= ops
    for x in _seeded((1, 3, 5, 4), 4, 3.0):
        np.testing.assert_allclose(_run_litert(it, x)["y"], sess.run(None, {"x": x})[0], atol=1e-5)


def test_resize_by_a_fraction_names_the_node(tmp_path):
    path = _upsample_graph(tmp_path, False)
    model = onnx.load(str(path))
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array([1, 1, 1.5, 2], np.float32), "scales"))
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_value = 7
    onnx.save(model, str(path))
    with pytest.raises(NotImplementedError, match="up.*integer factors"):
        onnx_to_tflite(path, tmp_path / "up.tflite")


@pytest.mark.skipif(not (shipped("face") and shipped("audio")), reason="shipped bundles not present")
@pytest.mark.parametrize("name", ["face", "audio"])
def test_shipped_bundle_on_real_media(name, tmp_path):
    src = shipped(name) / "model.int8.onnx"
    tfl = onnx_to_tflite(src, tmp_path / "model.tflite")
    inputs = portrait_crops() if name == "face" else demo_windows()
    noise = _seeded((1, 1, 48, 48), 3, 1.0) if name == "face" else _seeded((1, 32000), 3, 0.05)
    assert_agrees(src, tfl, inputs + noise)


@pytest.mark.skipif(not shipped("audio"), reason="shipped bundles not present")
def test_runtime_litert_backend_opens_the_converted_bundle(tmp_path):
    folder = tmp_path / "audio"
    shutil.copytree(shipped("audio"), folder)
    onnx_to_tflite(folder / "model.int8.onnx", folder / "model.tflite")
    write_manifest(folder, {k: v for k, v in load_bundle(folder).manifest.items() if k != "files"})
    bundle = load_bundle(folder)
    assert "model.tflite" in bundle.manifest["files"]
    lite = open_session(bundle, order=["litert"])
    ref = open_session(bundle, "onnxruntime")
    assert lite.name == "litert"
    step = _output_scale(folder / "model.int8.onnx")
    for x in demo_windows((2.0, 0.5, 2.0)):  # the backend resizes the input when the length changes
        a, b = lite.run({bundle.input_name: x}), ref.run({bundle.input_name: x})
        assert set(a) == {"logits", "embedding"}
        assert np.abs(a["logits"] - b["logits"]).max() <= STEPS * step * 1.001


def test_quantize_writes_tflite_when_the_profile_asks(tmp_path):
    torch = pytest.importorskip("torch")
    from distill.export import export_onnx
    from distill.quantize import QuantScheme, make_bundle
    from tiny_models import FACE_LABELS, TinyFace, random_inputs, seeded
    float_path = export_onnx(seeded(TinyFace, len(FACE_LABELS)), torch.zeros(1, 1, 48, 48),
                             tmp_path / "f.onnx", "face")
    manifest = {"name": "face", "modality": "face", "labels": list(FACE_LABELS), "embedding_dim": 16,
                "input": {"name": "face", "shape": [1, 1, 48, 48], "dtype": "float32",
                          "face": {"size": 48, "margin": 0.1, "std_floor": 8.0}},
                "metrics": {"split": "none"}, "provenance": {"trained_on": "nothing (test)"}}
    calib = random_inputs((1, 1, 48, 48), 8)
    out = tmp_path / "bundle"
    (out).mkdir()
    (out / "model.tflite").write_bytes(b"stale")
    make_bundle(float_path, out, QuantScheme(target="rpi4", tflite=True), calib, manifest, check=(calib, None))
    bundle = load_bundle(out)
    assert bundle.has_payload("tflite")
    assert bundle.manifest["agreement"]["litert_vs_onnxruntime_argmax"] >= 0.99
    assert open_session(bundle, "litert").run({"face": calib[0]})["logits"].shape == (1, len(FACE_LABELS))
    make_bundle(float_path, out, QuantScheme(target="x86"), calib, manifest)
    assert not load_bundle(out).has_payload("tflite") and not (out / "model.tflite").exists()
