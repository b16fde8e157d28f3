import tracemalloc

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from conftest import DEMO_WAV, PORTRAIT, rss_kb  # noqa: E402
from edge.audio import read_audio  # noqa: E402
from edge.bundle import load_bundle  # noqa: E402
from edge.pipeline import Model, Pipeline  # noqa: E402
from edge.profiles import load_profile  # noqa: E402
from edge.ring import AudioRing, FrameRing  # noqa: E402
from edge.settings import AUDIO  # noqa: E402

SR = AUDIO.sample_rate


def numpy_bytes(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes held by numpy array data (numpy traces them in its own tracemalloc domain)."""
    only_numpy = tracemalloc.DomainFilter(inclusive=True, domain=np.lib.tracemalloc_domain)
    return sum(stat.size for stat in snapshot.filter_traces([only_numpy]).statistics("filename"))


@pytest.fixture(scope="module")
def frame():
    return cv2.resize(cv2.imread(str(PORTRAIT)), (640, 480))


@pytest.fixture()
def pipe(bundles, frame):
    p = Pipeline(load_profile("x86"), bundles["audio"], bundles["face"], backend="numpy")
    p.use_frame_shape(frame.shape)
    return p


@pytest.fixture(scope="module")
def speech():
    """The demo clip's espeak voice, 16 kHz: what the voicing gate passes (noise it does not)."""
    return read_audio(DEMO_WAV)


def rings(frame, speech, seconds=3.0, gain=1.0):
    audio = AudioRing(4 * SR)
    audio.write(gain * speech[: int(seconds * SR)])
    frames = FrameRing(4, frame.shape)
    frames.write(frame, 3.0)
    return audio, frames


def test_one_hop_with_both_modalities(pipe, frame, speech):
    audio, frames = rings(frame, speech)
    r = pipe.step(3.0, audio, frames)
    assert r.audio["voiced"] and set(r.audio["probs"]) == set(pipe.audio.labels)
    assert sum(r.audio["probs"].values()) == pytest.approx(1.0, abs=1e-3)
    x, y, w, h = r.face["box"]
    assert 0 <= x and x + w <= frame.shape[1] and 0 <= y and y + h <= frame.shape[0]
    assert r.fused["label"] in pipe.fusion.labels
    assert {"ring", "vad", "audio", "face_detect", "face", "fusion", "total"} <= set(r.latency_ms)


def test_silence_is_not_voiced_and_the_model_is_not_run(pipe, frame, speech):
    audio, frames = rings(frame, speech, gain=0.0)
    r = pipe.step(3.0, audio, frames)
    assert r.audio["voiced"] is False and r.audio["probs"] is None
    assert r.fused["label"] == r.face["label"] or r.fused is not None  # face alone carries fusion
    assert pipe.fusion.weights["audio"] == 0


def test_stale_or_missing_frames_mean_no_face(pipe, frame, speech):
    audio, frames = rings(frame, speech)
    assert pipe.step(10.0, audio, frames).face is None  # frame is 7 s old
    assert pipe.step(3.0, audio, FrameRing(2, frame.shape)).face is None  # empty ring
    assert pipe.step(3.0, audio, None).face is None


def test_blank_view_has_no_face_but_audio_goes_on(pipe, speech):
    blank = np.full((480, 640, 3), 90, np.uint8)
    audio, frames = rings(blank, speech)
    r = pipe.step(3.0, audio, frames)
    assert r.face is None and r.audio["probs"] is not None and r.fused is not None


def test_the_audio_window_ends_at_the_hop_time(pipe, speech):
    """step(t) reads the window that ends at t, not the newest one: silent until 3 s, speech after."""
    audio, voice = AudioRing(6 * SR), speech[SR: 2 * SR]
    audio.write(np.zeros(3 * SR, np.float32))
    audio.write(voice)
    assert pipe.step(3.0, audio, None).audio["level_dbfs"] == -120.0
    first_hop = round(10 * np.log10(np.mean(voice[:160].astype(np.float64) ** 2)), 1)
    assert pipe.step(3.0 + 160 / SR, audio, None).audio["level_dbfs"] == pytest.approx(first_hop, abs=0.1)
    assert pipe.step(4.0, audio, None).audio["voiced"]


def test_level_describes_a_window_too_short_to_classify(pipe):
    audio = AudioRing(4 * SR)
    audio.write(np.full(SR // 10, 0.1, np.float32))
    r = pipe.step(0.1, audio, None).audio
    assert r["level_dbfs"] == -20.0 and not r["voiced"]


@pytest.mark.slow
def test_steady_state_allocates_nothing(pipe, frame, speech):
    """After warm-up, 200 hops add no numpy memory (tracemalloc) and RSS stays within 2 MB."""
    audio, frames = rings(frame, speech)
    blocks = speech[: len(speech) // (SR // 2) * (SR // 2)].reshape(-1, SR // 2)
    for i in range(20):
        audio.write(blocks[i % len(blocks)])
        frames.write(frame, 3.0 + i)
        pipe.step(3.0 + i, audio, frames)
    def hops(start, n):
        for i in range(start, start + n):
            audio.write(blocks[i % len(blocks)])
            frames.write(frame, 3.0 + i)
            pipe.step(3.0 + i, audio, frames)

    tracemalloc.start()
    hops(20, 5)  # arrays alive between hops are now traced too
    before = numpy_bytes(tracemalloc.take_snapshot())
    base_rss = rss_kb()
    hops(25, 200)
    after = numpy_bytes(tracemalloc.take_snapshot())
    tracemalloc.stop()
    assert after - before <= 0, f"{after - before} bytes of numpy arrays kept after 200 hops"
    assert rss_kb() - base_rss < 2048


def test_mirror_average_answers_the_mean_of_the_crop_and_its_mirror(tmp_path):
    pytest.importorskip("torch")
    import json
    from tiny_models import make_face_bundle
    folder = make_face_bundle(tmp_path / "face")
    plain = Model(load_bundle(folder), "numpy", ("numpy",), 1)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["input"]["mirror_average"] = True
    (folder / "manifest.json").write_text(json.dumps(manifest))
    mirrored = Model(load_bundle(folder), "numpy", ("numpy",), 1)
    x = np.random.default_rng(0).standard_normal((1, 1, 48, 48)).astype(np.float32)
    p, e = plain(x).copy(), plain.embedding.copy()
    q, f = plain(np.ascontiguousarray(x[..., ::-1])).copy(), plain.embedding.copy()
    assert not np.allclose(p, q)
    np.testing.assert_allclose(mirrored(x), (p + q) / 2, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mirrored.embedding, (e + f) / 2, rtol=1e-6, atol=1e-6)


def _face_bundle_copy(folder, src, margin: float, level_eyes: bool):
    import json
    import shutil
    from edge.bundle import write_manifest
    shutil.copytree(load_bundle(src).path, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["input"]["face"]["margin"] = margin
    manifest["input"]["alignment"] = {"level_eyes": level_eyes}
    write_manifest(folder, {k: v for k, v in manifest.items() if k != "files"})
    return str(folder)


def test_face_stage_takes_crop_and_alignment_from_the_face_bundle(tmp_path, bundles, frame):
    """The live face stage crops as the face bundle's manifest says (input.face, input.alignment),
    not as edge.settings.FACE / ALIGNMENT: bundles with other margins and alignments get theirs."""
    turned = _face_bundle_copy(tmp_path / "turned", bundles["face"], 0.2, True)
    plain = _face_bundle_copy(tmp_path / "plain", bundles["face"], 0.1, False)
    stages = [Pipeline(load_profile("x86"), None, b, backend="numpy").face_stage for b in (turned, plain)]
    assert stages[0].cropper.spec.margin == 0.2 and stages[0].cropper.level_eyes
    assert stages[1].cropper.spec == load_bundle(plain).face and not stages[1].cropper.level_eyes
    for s in stages:
        s.detect_every = 1
        assert s.process(frame) is not None
    assert not np.allclose(stages[0].input, stages[1].input)
