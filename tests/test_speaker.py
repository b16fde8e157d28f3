"""edge/speaker.py: live speaker adaptation (statistics, runtime stage, causal eval, export, CLI)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alloc import allocated_by
from conftest import DEMO_WAV, SHARED_DATA
from edge.audio import read_audio
from edge.evaluate import Row, evaluate_rows
from edge.features import LogMel, log_mel, window_samples
from edge.settings import AUDIO
from edge.speaker import STD_EPS, Adaptation, SpeakerStats, band_stats, causal_order, moments

HOP = AUDIO.hop
EMODB = SHARED_DATA / "emodb_2s"


def speech(seconds: float = 3.0) -> np.ndarray:
    return read_audio(DEMO_WAV)[: int(seconds * AUDIO.sample_rate)]


def test_statistics_are_band_mean_and_std_of_every_frame_added():
    logmel = log_mel(speech())
    stats = SpeakerStats()
    for part in np.array_split(logmel, 5):
        stats.add(part)
    out = stats.stats()
    assert out.shape == (1, 2, AUDIO.n_mels) and stats.frames == len(logmel)
    np.testing.assert_allclose(out[0, 0], logmel.mean(0), atol=1e-4)
    np.testing.assert_allclose(out[0, 1], np.sqrt(logmel.var(0) + STD_EPS), atol=1e-4)
    np.testing.assert_allclose(band_stats(moments(logmel), len(logmel)), out[0], atol=1e-6)
    stats.reset()
    assert stats.frames == 0 and not stats.sums.any()


def test_log_mel_buffers_serve_any_length_up_to_capacity():
    wave = speech()
    lm = LogMel(len(wave))
    for n in (len(wave), 4 * HOP, len(wave) // 2):
        np.testing.assert_array_equal(lm(wave[:n]).astype(np.float32), log_mel(wave[:n]))
    with pytest.raises(ValueError, match="samples"):
        lm(np.zeros(len(wave) + 4 * HOP, np.float32))


def hops(adapt: Adaptation, wave: np.ndarray, window: int, hop_s: float, t0: float = 0.0,
         voiced: bool = True) -> list[np.ndarray]:
    """Replay `wave` hop by hop into `adapt` (the window ending at each hop); stats per hop."""
    out, step = [], int(hop_s * AUDIO.sample_rate)
    for until in range(step, len(wave) + 1, step):
        x = wave[max(0, until - window):until]
        stats = adapt.update(x, until, t0 + until / AUDIO.sample_rate, voiced)
        out.append(None if stats is None else stats.copy())
    return out


def test_adaptation_adds_each_voiced_hop_once_and_waits_for_enough_audio():
    wave, window = speech(3.0), window_samples(1.0)
    adapt = Adaptation(window, min_s=1.5, reset_s=30.0)
    answers = hops(adapt, wave, window, 0.5)
    # every frame of the replay is in the statistics once (the first hop adds its whole window)
    assert adapt.speaker.frames == pytest.approx(len(wave) / HOP - 1, abs=2)
    first, last = answers[0][0], answers[-1][0]
    own_first = band_stats(moments(log_mel(wave[:window // 2])), len(log_mel(wave[:window // 2])))
    np.testing.assert_allclose(first, own_first, atol=1e-5)  # under min_s: the window's own
    full = log_mel(wave)
    np.testing.assert_allclose(last[0], full.mean(0), atol=0.05)  # then the speaker's
    assert hops(adapt, wave, window, 0.5, voiced=False) == [None] * len(answers)


def test_adaptation_resets_after_silence_and_on_request():
    wave, window = speech(2.0), window_samples(1.0)
    adapt = Adaptation(window, min_s=0.0, reset_s=5.0)
    hops(adapt, wave, window, 0.5)
    heard = adapt.speaker.frames
    hops(adapt, wave, window, 0.5, t0=3.0)                 # 3 s later: the same speaker
    assert adapt.speaker.frames > heard
    hops(adapt, wave, window, 0.5, t0=20.0)                # 18 s of silence: a new speaker
    assert adapt.speaker.frames <= heard + 2 * window // HOP
    adapt.reset()
    assert adapt.speaker.frames == 0
    off = Adaptation(window, min_s=0.0, reset_s=5.0, enabled=False)
    hops(off, wave, window, 0.5)
    assert off.speaker.frames == 0


def test_adaptation_allocates_nothing_per_hop():
    setup = "\n".join(["from edge.speaker import Adaptation",
                       "w = (np.random.default_rng(0).standard_normal(48000) * 0.1).astype(np.float32)",
                       "a = Adaptation(48000, 0.5, 1e9)", "i = 0"])
    step = "a.update(w, 8000 * (i + 2), 0.5, True)"  # half a second new per hop
    peak, held = allocated_by("", setup, step, steps=50)
    peak_more, held_more = allocated_by("", setup, step, steps=300)
    assert max(peak, peak_more) < 8192, "a window's log-mel went through new memory (one is 48 KB)"
    assert held_more - held < 256, "memory held grows with the number of hops"


def test_causal_order_is_fixed_and_groups_each_speaker():
    speakers = ["a", "b", "a", "c", "b", "a", "c", "a"]
    order = causal_order(speakers)
    assert order == causal_order(speakers) and sorted(order) == list(range(len(speakers)))
    assert [speakers[i] for i in order] == ["a"] * 4 + ["b"] * 2 + ["c"] * 2
    assert order[:4] != [0, 2, 5, 7] or causal_order(speakers, seed=1) != order


def test_training_side_causal_statistics_use_utterances_up_to_each_one():
    pytest.importorskip("torch")
    from distill.distillation import Arrays, causal_stats
    wave = speech(3.0)
    lengths = np.array([48000, 32000, 40000, 24000])
    x = np.stack([np.roll(wave, 8000 * i) for i in range(4)])
    data = Arrays(x=x, y=np.zeros(4, np.int64), lengths=lengths, speaker=np.array(list("abab")))
    stats = causal_stats(data)
    for speaker in "ab":
        played = [i for i in causal_order(list(data.speaker)) if data.speaker[i] == speaker]
        for k, i in enumerate(played):
            heard = np.concatenate([log_mel(x[j, :lengths[j]]) for j in played[:k + 1]])
            np.testing.assert_allclose(stats[i, 0], heard.mean(0), atol=2e-3)  # torch front end vs numpy


class Recorder:
    """A scorer that adapts: records the files and the speaker resets it is given."""

    adapts = True

    def __init__(self) -> None:
        self.calls: list[str] = []

    def reset_speaker(self) -> None:
        self.calls.append("reset")

    def __call__(self, path: Path) -> np.ndarray:
        self.calls.append(path.name)
        return np.array([1.0, 0.0])


def test_eval_plays_each_speaker_causally_in_a_fixed_order():
    rows = [Row(Path(f"{s}{i}.wav"), "happy", s) for i, s in enumerate("abab")]
    first, again = Recorder(), Recorder()
    report = evaluate_rows(first, ("happy", "sad"), rows)
    evaluate_rows(again, ("happy", "sad"), rows)
    assert first.calls == again.calls
    assert [c for c in first.calls if c == "reset"] == ["reset"] * 2
    a_files = first.calls[1:3]
    assert sorted(a_files) == ["a0.wav", "a2.wav"] and first.calls[3] == "reset"
    assert [it["speaker"] for it in report["items"]] == ["a", "a", "b", "b"]


# ---------------------------------------------------------------- a speaker-normalized bundle

@pytest.fixture(scope="module")
def speaker_bundle(tmp_path_factory) -> Path:
    """A tiny untrained speaker-normalized AudioStudent through the real export path."""
    torch = pytest.importorskip("torch")
    from distill.distillation import Arrays
    from distill.models.students import AudioStudent
    from distill.corpora import AUDIO_LABELS
    from distill.ship import student_bundle
    torch.manual_seed(0)
    model = AudioStudent(len(AUDIO_LABELS), channels=(4, 8), speaker_norm=True).eval()
    rng = np.random.default_rng(0)
    wave = np.tile(speech(3.0), (4, 1)) * rng.uniform(0.3, 1.0, (4, 1)).astype(np.float32)
    calib = Arrays(x=wave, y=np.arange(4), lengths=np.full(4, wave.shape[1]), speaker=np.array(list("abab")))
    return student_bundle(model, "audio", AUDIO_LABELS, tmp_path_factory.mktemp("spk") / "audio", "x86",
                          calib, {"trained_on": "test", "teacher": "none"})


def test_two_input_export_runs_the_same_in_numpy_and_onnxruntime(speaker_bundle):
    from edge.backends.numpy_int8 import NumpyInterpreter
    from edge.backends.onnxruntime import OrtSession
    from edge.bundle import load_bundle
    from edge.speaker import window_stats
    bundle = load_bundle(speaker_bundle)
    assert bundle.stats_input == "speaker_stats"
    ort = OrtSession(bundle.payload("int8.onnx"), bundle.outputs)
    interp = NumpyInterpreter(bundle.payload("npz"))
    for seconds in (1.0, 3.0):
        x = speech(seconds)
        for stats in (window_stats(x), window_stats(x) + np.float32(0.5)):
            feed = {"waveform": x[None], "speaker_stats": stats}
            np.testing.assert_allclose(interp.run(feed)["logits"], ort.run(feed)["logits"], atol=1e-3)


def test_make_quantize_requantizes_the_two_input_model(speaker_bundle, tmp_path):
    from distill.quantize import quantize_target
    from edge.bundle import load_bundle
    windows = [speech(s)[None] for s in (1.0, 2.0, 3.0)]
    [folder] = quantize_target("jetson-orin", speaker_bundle.parent, tmp_path, {"audio": windows})
    bundle = load_bundle(folder)
    assert bundle.stats_input == "speaker_stats" and bundle.manifest["quantization"]["symmetric_activations"]
    assert bundle.manifest["agreement"]["numpy_vs_onnxruntime_argmax"] == 1.0


def test_a_litert_target_refuses_the_two_input_model_in_one_line(tmp_path):
    pytest.importorskip("torch")
    from distill.distillation import Arrays
    from distill.models.students import AudioStudent
    from distill.corpora import AUDIO_LABELS
    from distill.ship import student_bundle
    from edge.errors import ConfigError
    x = speech(3.0)[None]
    calib = Arrays(x=x, y=np.zeros(1, np.int64), lengths=np.array([x.shape[1]]), speaker=np.array(["a"]))
    model = AudioStudent(len(AUDIO_LABELS), channels=(4, 8), speaker_norm=True).eval()
    with pytest.raises(ConfigError, match="second input .* tflite = false"):
        student_bundle(model, "audio", AUDIO_LABELS, tmp_path / "audio", "rpi4", calib, {})


def test_pipeline_feeds_statistics_and_reset_speaker_is_public(speaker_bundle):
    import edge
    with edge.open(audio=str(DEMO_WAV), audio_model=str(speaker_bundle), face_model=None) as stream:
        voiced = [r for r in stream if r.audio["voiced"]]
        adaptation = stream.pipeline.adaptation
        assert voiced and adaptation.speaker.frames > 0
        stream.reset_speaker()
        assert adaptation.speaker.frames == 0


def test_adapting_pipeline_keeps_no_numpy_memory_per_hop(speaker_bundle):
    import tracemalloc
    from edge.pipeline import Pipeline
    from edge.profiles import load_profile
    from edge.ring import AudioRing
    pipe = Pipeline(load_profile("x86"), str(speaker_bundle), None, "numpy")
    wave = read_audio(DEMO_WAV)
    ring, half = AudioRing(4 * AUDIO.sample_rate), AUDIO.sample_rate // 2
    blocks = wave[: len(wave) // half * half].reshape(-1, half)

    def hops(start: int, n: int) -> int:
        voiced = 0
        for i in range(start, start + n):
            ring.write(blocks[i % len(blocks)])
            voiced += pipe.step(0.5 * (i + 1), ring, None).audio["voiced"]
        return voiced

    assert hops(0, 12) > 0 and pipe.adaptation.speaker.frames > 0
    only_numpy = tracemalloc.DomainFilter(inclusive=True, domain=np.lib.tracemalloc_domain)
    tracemalloc.start()
    hops(12, 4)
    before = tracemalloc.take_snapshot().filter_traces([only_numpy])
    assert hops(16, 60) > 0
    after = tracemalloc.take_snapshot().filter_traces([only_numpy])
    tracemalloc.stop()
    kept = sum(s.size for s in after.statistics("filename")) - sum(s.size for s in before.statistics("filename"))
    assert kept <= 0, f"{kept} bytes of numpy arrays kept after 60 hops"


def need_emodb() -> None:
    if not (EMODB / "labels.csv").is_file():
        pytest.skip(f"{EMODB} is absent (../shared/data)")


def test_cli_eval_reports_both_answers_and_no_adapt_turns_it_off(speaker_bundle, tmp_path):
    need_emodb()
    from edge.cli import main
    both, off = tmp_path / "both.json", tmp_path / "off.json"
    args = ["eval", "--model", str(speaker_bundle), "--data", str(EMODB), "--limit", "6", "--backend", "numpy"]
    assert main(args + ["--json", str(both)]) == 0
    assert main(args + ["--json", str(off), "--no-adapt"]) == 0
    adaptive, plain = json.loads(both.read_text()), json.loads(off.read_text())
    assert "no_adapt" in adaptive and "no_adapt" not in plain
    assert adaptive["no_adapt"]["items"] == plain["items"]
    assert adaptive["items"] != plain["items"]  # the speaker's statistics changed the answers


def test_cli_run_no_adapt(speaker_bundle, capsys):
    need_emodb()
    from edge.cli import main
    wav = next(EMODB.glob("*/*.flac"))
    outs = []
    for extra in ([], ["--no-adapt"]):
        assert main(["run", "--audio", str(wav), "--audio-model", str(speaker_bundle), "--hop", "0.25"] + extra) == 0
        outs.append([json.loads(line)["audio"] for line in capsys.readouterr().out.splitlines()])
    assert any(a["voiced"] for a in outs[0])
    assert [a["voiced"] for a in outs[0]] == [a["voiced"] for a in outs[1]]
