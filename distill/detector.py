"""YuNet face detector -> the `face_detector` bundle (edge/models/face_detector).

In:  yunet_s_dynamic.onnx (../shared/models/face_detectors: YuNet "s", the weights of OpenCV
     Zoo's face_detection_yunet_2023mar; input 1x3xHxW BGR 0..255, any H, W multiple of 32)
     and its licence texts and SOURCE.txt from the same folder.
Out: a bundle folder (docs/bundle-format.md, modality "detector"): model.onnx (float, opset 17,
     input pinned to [1, 3, H, W], the shape arithmetic folded away), model.npz (the numpy
     interpreter's copy of model.onnx) and model.tflite (LiteRT, by distill/tflite.py, the
     converter the students use), with `--int8` also model.int8.onnx (static QDQ, calibrated
     on frames from the demo clip and the CREMA-D fixture; model.npz and model.tflite are then
     made from it), LICENSE.txt, SOURCE.txt and manifest.json (sha256 of every payload,
     source, licence).

CLI: python -m distill.detector [--source DIR] [--out edge/models/face_detector] [--size 320x256] [--int8]
"""
from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

from distill.to_npz import onnx_to_npz
from distill.export import quantize_int8
from distill.tflite import _trace, onnx_to_tflite
from edge.bundle import FORMAT, load_bundle, write_manifest

_LOGGER = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIR = ROOT.parent / "shared" / "models" / "face_detectors"
SOURCE_MODEL = "yunet_s_dynamic.onnx"
LICENCE = "LICENSE.yunet-opencv_zoo.txt"
OPSET = 17
SCORE_THRESHOLD = 0.7
"""OpenCV Zoo uses 0.9; 0.7 found more faces with no false positive (docs/performance.md)."""
NMS_IOU = 0.3
STUDENT_BOX = {"side": 0.93, "dy": -0.035}
"""Haar-like square from a YuNet box, in fractions of its height (edge/detector.py; measured
on the demo and CREMA-D frames where both detectors found the face: docs/performance.md)."""
OUTPUTS = [f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in (8, 16, 32)]


def fixed_shape_model(src: Path, height: int, width: int) -> onnx.ModelProto:
    """YuNet with its input pinned to [1, 3, height, width] and every Shape/Gather/Concat folded."""
    model = version_converter.convert_version(onnx.load(str(src)), OPSET)
    trace = _trace(model, [1, 3, height, width])
    used = sorted({i for n in trace.nodes for i in n.input if i in trace.consts})
    graph = helper.make_graph(
        trace.nodes, "yunet_s",
        [helper.make_tensor_value_info(trace.input, onnx.TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, list(trace.shapes[o])) for o in trace.outputs],
        [numpy_helper.from_array(trace.consts[n], n) for n in used])
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    out.ir_version = model.ir_version
    onnx.checker.check_model(out)
    return out


def _calibration(height: int, width: int, limit: int = 48) -> list[np.ndarray]:
    """Detector inputs made from frames with faces (demo clip, CREMA-D fixture when present)."""
    import sys
    sys.path.insert(0, str(ROOT / "tools"))
    from detector_quality import face_sets

    from edge.detector import FrameFit
    fit = FrameFit(height, width)
    frames = [f for frames in face_sets().values() for f in frames]
    step = max(1, len(frames) // limit)
    return [fit(f).copy() for f in frames[::step]]


def build(out: Path, source: Path = SOURCE_DIR, height: int = 256, width: int = 320, int8: bool = False) -> Path:
    """Write the detector bundle folder `out`; returns it."""
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(fixed_shape_model(source / SOURCE_MODEL, height, width), str(out / "model.onnx"))
    npz_source = out / "model.onnx"
    if int8:
        quantize_int8(out / "model.onnx", out / "model.int8.onnx", _calibration(height, width), "input")
        npz_source = out / "model.int8.onnx"
    onnx_to_npz(npz_source, out / "model.npz")
    onnx_to_tflite(npz_source, out / "model.tflite")
    shutil.copyfile(source / LICENCE, out / "LICENSE.txt")
    shutil.copyfile(source / "SOURCE.txt", out / "SOURCE.txt")
    write_manifest(out, _manifest(height, width, int8))
    load_bundle(out)
    _LOGGER.info("wrote bundle %s", out)
    return out


def _manifest(height: int, width: int, int8: bool) -> dict:
    return {
        "format": FORMAT, "name": "face_detector", "version": "1.0.0", "modality": "detector",
        "labels": ["face"], "embedding_dim": 0,
        "input": {"name": "input", "shape": [1, 3, height, width], "dtype": "float32",
                  "detector": {"kind": "yunet", "score_threshold": SCORE_THRESHOLD, "nms_iou": NMS_IOU,
                               "student_box": STUDENT_BOX,
                               "channels": "BGR", "range": [0, 255]}},
        "outputs": {name: name for name in OUTPUTS},
        "quantization": {"scheme": "int8-qdq" if int8 else "float32",
                         "npz_from": "model.int8.onnx" if int8 else "model.onnx",
                         "tflite_from": "model.int8.onnx" if int8 else "model.onnx"},
        "provenance": {
            "model": "YuNet s (libfacedetection.train onnx/yunet_s_dynamic.onnx; weights of OpenCV Zoo "
                     "face_detection_yunet_2023mar)",
            "source": "github.com/ShiqiYu/libfacedetection.train @ 0047ac24afb1a50a0c6105001c89d1b5b805dbf1",
            "licence": "MIT (opencv_zoo models/face_detection_yunet/LICENSE), LICENSE.txt here",
            "training_data": "WIDER FACE (research-oriented terms), labels derived from SCRFD's",
            "changes": f"opset 11 -> {OPSET}, input pinned to [1, 3, {height}, {width}], shape arithmetic folded",
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the face_detector bundle from YuNet")
    parser.add_argument("--source", type=Path, default=SOURCE_DIR)
    parser.add_argument("--out", type=Path, default=ROOT / "edge" / "models" / "face_detector")
    parser.add_argument("--size", default="320x256", help="detector input WxH, multiples of 32")
    parser.add_argument("--int8", action="store_true", help="also write a static int8 QDQ model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    width, height = (int(v) for v in args.size.lower().split("x"))
    build(args.out, args.source, height, width, args.int8)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
