"""edge/bundle.py: a good bundle loads; every kind of corruption is a BundleError naming the file."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from edge import bundle as bundle_mod  # noqa: E402
from edge.backends import numpy_int8  # noqa: E402
from edge.bundle import load_bundle, write_manifest  # noqa: E402
from edge.errors import AvemoError, BundleError  # noqa: E402
from edge.settings import FaceInput  # noqa: E402
from tiny_models import FACE_LABELS, make_face_bundle  # noqa: E402


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return make_face_bundle(tmp_path_factory.mktemp("good") / "face")


@pytest.fixture
def copy(good, tmp_path) -> Path:
    return Path(shutil.copytree(good, tmp_path / "face"))


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _edit_manifest(folder: Path, **fields) -> None:
    (folder / "manifest.json").write_text(json.dumps({**_manifest(folder), **fields}))


def test_good_bundle_loads(good):
    b = load_bundle(good)
    assert b.name == "face" and b.modality == "face" and b.labels == FACE_LABELS
    assert b.input_name == "face" and b.input_shape == (1, 1, 48, 48)
    assert b.face == FaceInput(size=48) and b.frontend is None and b.window_s is None
    assert b.outputs == {"logits": "logits", "embedding": "embedding"} and b.embedding_dim == 16
    assert b.payload("npz") == good / "model.npz" and b.payload("int8.onnx").is_file()
    assert load_bundle(good / "manifest.json").path == good
    assert load_bundle(str(good)).manifest["agreement"]["numpy_vs_onnxruntime_argmax"] == 1.0


def test_builtin_name_resolves_under_models_dir(good, tmp_path, monkeypatch):
    shutil.copytree(good, tmp_path / "face")
    monkeypatch.setattr(bundle_mod, "MODELS_DIR", tmp_path)
    assert load_bundle("face").path == tmp_path / "face"
    with pytest.raises(BundleError, match=r"no-such: no such bundle.*built-in name \(face\)"):
        load_bundle("no-such")


def test_absent_payload_kind(copy):
    (copy / "model.onnx").unlink()
    write_manifest(copy, _manifest(copy))
    b = load_bundle(copy)
    assert not b.has_payload("onnx") and b.has_payload("npz")
    with pytest.raises(BundleError, match="model.onnx payload"):
        b.payload("onnx")
    with pytest.raises(BundleError, match="no model.tflite payload"):
        b.payload("tflite")
    with pytest.raises(BundleError, match="unknown payload kind"):
        b.payload("pt")


def test_missing_manifest(copy):
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest.json: manifest missing"):
        load_bundle(copy)


def test_bad_json(copy):
    (copy / "manifest.json").write_text('{"format": "avemo-bundle/1", ')
    with pytest.raises(BundleError, match=r"manifest.json: not valid UTF-8 JSON"):
        load_bundle(copy)


def test_wrong_format_version(copy):
    _edit_manifest(copy, format="avemo-bundle/2")
    with pytest.raises(BundleError, match=r"manifest.json: format is 'avemo-bundle/2'"):
        load_bundle(copy)


def test_missing_payload(copy):
    (copy / "model.npz").unlink()
    with pytest.raises(BundleError, match=r"model.npz: payload listed in manifest.json is missing"):
        load_bundle(copy)


def test_wrong_size(copy):
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=r"model.onnx: size mismatch"):
        load_bundle(copy)


def test_wrong_sha256(copy):
    data = bytearray((copy / "model.int8.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.int8.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model.int8.onnx: sha256 mismatch .*re-export it with `make quantize`"):
        load_bundle(copy)


def test_labels_not_unique(copy):
    _edit_manifest(copy, labels=["happy", "sad", "happy"])
    with pytest.raises(BundleError, match=r"manifest.json: labels are not unique"):
        load_bundle(copy)


@pytest.mark.parametrize("fields, problem", [
    ({"labels": []}, "labels must be a non-empty list"),
    ({"embedding_dim": "16"}, "field 'embedding_dim' must be int"),
    ({"modality": "smell"}, "modality must be 'audio', 'face' or 'detector'"),
    ({"modality": "audio"}, "input.frontend is missing"),
    ({"input": {"name": "face", "shape": [1, 1, 64, 64], "face": {"size": 48}}}, r"needs input.shape \[1, 1, 48, 48\]"),
    ({"outputs": {"embedding": "embedding"}}, "outputs must map 'logits'"),
    ({"input": {"name": "face", "shape": [1, 1, 48, 48], "face": {"size": 48}, "mirror_average": "yes"}},
     "input.mirror_average must be true or false"),
    ({"input": {"name": "face", "shape": [1, 1, 48, 48], "face": {"size": 48}, "alignment": "eyes"}},
     "input.alignment must be an object with level_eyes true or false"),
])
def test_inconsistent_fields(copy, fields, problem):
    _edit_manifest(copy, **fields)
    with pytest.raises(BundleError, match=problem):
        load_bundle(copy)


def test_unknown_op_in_npz(copy):
    with np.load(copy / "model.npz") as z:
        arrays = {k: z[k] for k in z.files}
    graph = json.loads(arrays["__graph__"].tobytes())
    graph["nodes"][-1]["op"] = "FancyOp"
    arrays["__graph__"] = np.frombuffer(json.dumps(graph).encode(), np.uint8)
    np.savez(copy / "model.npz", **arrays)
    write_manifest(copy, _manifest(copy))
    with pytest.raises(BundleError, match=r"model.npz: unknown op 'FancyOp' at node \d+"):
        numpy_int8.load(load_bundle(copy))


def test_truncated_npz(copy):
    data = (copy / "model.npz").read_bytes()
    (copy / "model.npz").write_bytes(data[: len(data) // 2])
    write_manifest(copy, _manifest(copy))  # hashes match: only the reader can tell
    with pytest.raises(BundleError, match=r"model.npz: cannot read"):
        numpy_int8.load(load_bundle(copy))


def test_errors_are_one_line_avemo_errors(copy):
    (copy / "manifest.json").write_text("[1, 2]")
    with pytest.raises(AvemoError) as info:
        load_bundle(copy)
    assert "\n" not in str(info.value) and str(copy) in str(info.value)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                           max_leaves=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400))
def test_random_manifest_bytes_only_bundle_error(good, data):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(good, Path(tmp) / "face"))
        (folder / "manifest.json").write_bytes(data)
        with pytest.raises(BundleError):
            load_bundle(folder)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["format", "labels", "input", "outputs", "embedding_dim", "files", "modality"]),
       value=json_values)
def test_random_manifest_fields_only_bundle_error(good, key, value):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(good, Path(tmp) / "face"))
        _edit_manifest(folder, **{key: value})
        try:
            load_bundle(folder)
        except BundleError:
            pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=400), st.binary(max_size=400).map(lambda b: b"PK\x03\x04" + b),
                      st.binary(max_size=400).map(lambda b: b"\x93NUMPY" + b)))
def test_random_npz_bytes_only_bundle_error(good, data):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(good, Path(tmp) / "face"))
        (folder / "model.npz").write_bytes(data)
        write_manifest(folder, _manifest(folder))
        with pytest.raises(BundleError):
            numpy_int8.load(load_bundle(folder))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(["graph", "inputs", "outputs", "nodes", "node", "attrs", "op_inputs"]), value=json_values)
def test_random_graph_json_only_bundle_error(good, where, value):
    with np.load(good / "model.npz") as z:
        arrays = {k: z[k] for k in z.files}
    graph = json.loads(arrays["__graph__"].tobytes())
    conv = next(n for n in graph["nodes"] if n["op"] == "Conv")
    if where == "graph":
        graph = value
    elif where in ("inputs", "outputs", "nodes"):
        graph[where] = value
    elif where == "node":
        graph["nodes"][-1] = value
    else:
        conv["attrs" if where == "attrs" else "inputs"] = value
    arrays["__graph__"] = np.frombuffer(json.dumps(graph).encode(), np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(good, Path(tmp) / "face"))
        np.savez(folder / "model.npz", **arrays)
        write_manifest(folder, _manifest(folder))
        try:
            session = numpy_int8.load(load_bundle(folder))
            session.run({"face": np.zeros((1, 1, 48, 48), np.float32)})
        except BundleError:
            pass
