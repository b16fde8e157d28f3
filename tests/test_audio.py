"""Audio files in every supported encoding, resampling, video audio tracks, the microphone."""
from __future__ import annotations

import csv
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.audio import MicSource, StreamResampler, list_audio_devices, read_audio, read_video_audio, resample
from edge.errors import DeviceError, MediaError
from edge.ring import AudioRing
from edge.settings import AUDIO

from alloc import allocated_by
from media import face_video, need, shared_data, speech_wav, virtual_mic, write_wav

SR = AUDIO.sample_rate
ENCODINGS = [(8, False), (16, False), (24, False), (32, False), (32, True), (64, True)]


def sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)


def peak_hz(x: np.ndarray, rate: int = SR) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * rate / len(x))


@pytest.mark.parametrize("bits,floating", ENCODINGS)
@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_wav_any_encoding_rate_channels(tmp_path, bits, floating, rate, channels):
    mono = sine(440.0, rate, 0.5)
    x = mono if channels == 1 else np.stack([1.5 * mono, 0.5 * mono], axis=1)  # averages to mono
    y = read_audio(write_wav(tmp_path / "a.wav", x, rate, bits, floating))
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - SR // 2) <= 1
    assert abs(peak_hz(y) - 440.0) < 3.0
    core = y[200:-200]
    expected = sine(440.0, SR, 0.5)[200:-200]
    tol = 0.02 if bits == 8 else 2e-3
    np.testing.assert_allclose(core, expected[:len(core)], atol=tol)


@pytest.mark.parametrize("bits,floating", ENCODINGS)
def test_wav_decodes_exact_values_at_16k(tmp_path, bits, floating):
    x = np.array([-1.0, -0.5, -2.0**-7, 0.0, 2.0**-7, 0.25, 0.5 - 2.0**-7])
    y = read_audio(write_wav(tmp_path / "e.wav", x, SR, bits, floating))
    np.testing.assert_array_equal(y, x.astype(np.float32))


def test_wav_extensible_and_odd_chunks(tmp_path):
    x = (np.arange(-50, 50) * 300).astype("<i2")
    fmt = struct.pack("<HHIIHH", 0xFFFE, 1, SR, 2 * SR, 2, 16) + struct.pack("<HHI", 22, 16, 4) \
        + struct.pack("<H", 1) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"LIST" + struct.pack("<I", 3) \
        + b"abc\x00" + b"data" + struct.pack("<I", x.nbytes) + x.tobytes()
    (tmp_path / "x.wav").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    np.testing.assert_array_equal(read_audio(tmp_path / "x.wav"), x / 32768.0)


def test_flac_via_soundfile(tmp_path):
    sf = pytest.importorskip("soundfile")
    sf.write(tmp_path / "a.flac", sine(1000.0, 44100, 0.5, 0.3), 44100, subtype="PCM_24")
    y = read_audio(tmp_path / "a.flac")
    assert abs(len(y) - SR // 2) <= 1 and abs(peak_hz(y) - 1000.0) < 3.0


def test_other_formats_via_ffmpeg(tmp_path):
    need("ffmpeg")
    wav = write_wav(tmp_path / "a.wav", sine(440.0, 44100, 1.0), 44100)
    import subprocess
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(wav), "-c:a", "aac", str(tmp_path / "a.m4a")],
                   check=True)
    y = read_audio(tmp_path / "a.m4a")
    assert abs(len(y) / SR - 1.0) < 0.1 and abs(peak_hz(y) - 440.0) < 3.0


def _truncated_wav(tmp_path: Path) -> Path:
    data = write_wav(tmp_path / "t.wav", sine(440.0, SR, 0.5), SR).read_bytes()
    (tmp_path / "t.wav").write_bytes(data[:len(data) // 2])
    return tmp_path / "t.wav"


def _truncated_flac(tmp_path: Path) -> Path:
    sf = pytest.importorskip("soundfile")
    sf.write(tmp_path / "t.flac", sine(440.0, SR, 1.0), SR)
    data = (tmp_path / "t.flac").read_bytes()
    (tmp_path / "t.flac").write_bytes(data[:len(data) // 2])
    return tmp_path / "t.flac"


def _bytes(name: str, data: bytes):
    def make(tmp_path: Path) -> Path:
        (tmp_path / name).write_bytes(data)
        return tmp_path / name
    return make


@pytest.mark.parametrize("make,message", [
    (_truncated_wav, "truncated WAV: header says 16000 bytes"),
    (_truncated_flac, "corrupt or truncated"),
    (_bytes("e.wav", b""), "empty file"),
    (lambda p: write_wav(p / "z.wav", np.zeros(0), SR), "no audio samples"),
    (_bytes("g.wav", bytes(range(256)) * 8), "unsupported or corrupt"),
    (_bytes("h.wav", b"RIFF\x10\x00\x00\x00WAVEfmt "), "no 'fmt ' chunk"),
    (lambda p: p / "missing.wav", "cannot read audio file"),
])
def test_bad_files_raise_media_error_naming_the_file(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(MediaError, match=message) as err:
        read_audio(path)
    assert path.name in str(err.value)


def test_unsupported_wav_codec_names_the_problem(tmp_path):
    fmt = struct.pack("<HHIIHH", 0x0055, 1, SR, 2000, 1, 0)  # MPEG layer 3 inside RIFF
    body = b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", 64) + bytes(64)
    (tmp_path / "mp3.wav").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    with pytest.raises(MediaError, match="mp3.wav"):
        read_audio(tmp_path / "mp3.wav")


def test_unsupported_sample_rate(tmp_path):
    with pytest.raises(MediaError, match="sample rate 5 Hz"):
        read_audio(write_wav(tmp_path / "r.wav", np.zeros(100), 5))


def _wav_header_then(payload: bytes, tag: int, channels: int, rate: int, bits: int) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits)
    return b"RIFF\xff\xff\xff\xffWAVEfmt " + struct.pack("<I", 16) + fmt + b"data" \
        + struct.pack("<I", len(payload)) + payload


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=2048),
    st.builds(_wav_header_then, st.binary(max_size=512), st.sampled_from([0, 1, 2, 3, 0xFFFE, 7]),
              st.integers(0, 65535), st.integers(0, 800000), st.sampled_from([0, 1, 8, 12, 16, 24, 32, 64])),
    st.binary(max_size=600).map(lambda b: b"RIFF\x00\x01\x00\x00WAVE" + b),
))
def test_random_bytes_only_raise_media_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.wav"
        path.write_bytes(data)
        try:
            y = read_audio(path)
        except MediaError as e:
            assert "fuzz.wav" in str(e)
        else:
            assert y.dtype == np.float32 and y.ndim == 1 and len(y) > 0


def test_video_audio_track(tmp_path):
    need("ffmpeg", "espeak-ng")
    speech = speech_wav(tmp_path / "s.wav")
    clip = face_video(tmp_path / "v.mp4", seconds=1.0, audio=speech)
    ref, got = read_audio(speech), read_video_audio(clip)
    assert got is not None and got.dtype == np.float32
    assert abs(len(got) - len(ref)) < 0.1 * SR
    ratio = np.sqrt(np.mean(got**2) / np.mean(ref**2))
    assert 0.8 < ratio < 1.25
    assert read_video_audio(tmp_path / "v.silent.mp4") is None


def _rows(folder: Path, **match: str) -> list[dict]:
    with open(folder / "labels.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if all(r[k] == v for k, v in match.items())]


def test_real_corpora_ravdess_flac_and_cremad_video_track():
    ravdess = shared_data("ravdess_speech")
    row = _rows(ravdess)[0]
    assert abs(len(read_audio(ravdess / row["path"])) / SR - float(row["duration_s"])) < 0.01
    need("ffmpeg")
    cremad = shared_data("cremad_fixture")
    row = _rows(cremad, has_video="yes")[0]
    track, wav = read_video_audio(cremad / row["path_video"]), read_audio(cremad / row["path_audio"])
    assert abs(len(track) - len(wav)) < 0.1 * SR
    assert _best_correlation(track, wav) > 0.9  # the flv's mp3 track is the same speech


def test_video_audio_errors(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    with pytest.raises(MediaError, match="bad.mp4"):
        read_video_audio(tmp_path / "bad.mp4")
    with pytest.raises(MediaError, match="nope.mp4"):
        read_video_audio(tmp_path / "nope.mp4")


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 96000])
def test_resample_preserves_sine(rate):
    y = resample(sine(997.0, rate, 1.0), rate, SR)
    assert len(y) == SR
    expected = sine(997.0, SR, 1.0)
    np.testing.assert_allclose(y[100:-100], expected[100:-100], atol=1e-3)


def test_resample_removes_aliases():
    y = resample(sine(12000.0, 48000, 1.0), 48000, SR)  # above the new Nyquist: must vanish
    assert np.sqrt(np.mean(y[100:-100] ** 2)) < 1e-3 * 0.5


def test_resample_same_rate_is_identity():
    x = sine(440.0, SR, 0.1).astype(np.float32)
    np.testing.assert_array_equal(resample(x, SR, SR), x)


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_stream_resampler_matches_offline(rate):
    x = (sine(440.0, rate, 1.0) + 0.1 * np.random.default_rng(1).standard_normal(rate)).astype(np.float32)
    offline = resample(x, rate, SR)
    rs, pieces, pos = StreamResampler(rate, SR, max_block=2048), [], 0
    for n in np.random.default_rng(2).integers(1, 2048, size=10_000):
        if pos >= len(x):
            break
        pieces.append(rs.process(x[pos:pos + n]).copy())
        pos += n
    streamed = np.concatenate(pieces)
    assert len(offline) - len(streamed) <= rs.half * SR // rate + 2
    np.testing.assert_allclose(streamed, offline[:len(streamed)], atol=1e-5)


def test_stream_resampler_allocates_nothing_per_block():
    peak, held = allocated_by("from edge.audio import StreamResampler",
                              "rs, block = StreamResampler(44100, 16000, max_block=882), np.ones(882, np.float32)\n"
                              "for _ in range(20): rs.process(block)",
                              "rs.process(block)", steps=500)
    assert peak < 4096 and held < 1024


def test_mic_unknown_device_is_a_device_error():
    pytest.importorskip("sounddevice")
    for device in ("no-such-microphone-xyz", 999):
        with pytest.raises(DeviceError, match="avemo-edge info"):
            MicSource(AudioRing(SR), device=device).start()


def _wait_flowing(ring: AudioRing, timeout: float = 10.0) -> None:
    """The ALSA pulse plugin delivers its first block ~2 s after a process opens a stream."""
    end = time.monotonic() + timeout
    while ring.written == 0 and time.monotonic() < end:
        time.sleep(0.05)
    assert ring.written > 0, "the virtual microphone delivered nothing"


def _record(mic_device, vm, wav: Path, ring: AudioRing) -> MicSource:
    mic = MicSource(ring, device=mic_device)
    mic.start()
    try:
        _wait_flowing(ring)
        vm.play(wav)
        time.sleep(0.3)
    finally:
        mic.stop()
    return mic


def _best_correlation(recorded: np.ndarray, ref: np.ndarray) -> float:
    n = 1 << int(np.ceil(np.log2(len(recorded) + len(ref))))
    xc = np.fft.irfft(np.fft.rfft(recorded, n) * np.conj(np.fft.rfft(ref, n)), n)
    return float(xc.max() / (np.linalg.norm(ref) ** 2))


@pytest.mark.slow
def test_mic_records_the_virtual_microphone(tmp_path):
    pytest.importorskip("sounddevice")
    need("espeak-ng")
    wav = speech_wav(tmp_path / "s.wav", "The quick brown fox jumps over the lazy dog.")
    ref = read_audio(wav)
    with virtual_mic() as vm:
        assert any(d["name"] == vm.device for d in list_audio_devices())
        ring = AudioRing(20 * SR)
        mic = _record("puls", vm, wav, ring)  # by a substring of its name
    assert mic.rate > 0 and mic.errors == 0
    recorded = np.empty(min(ring.written, ring.capacity), np.float32)
    ring.read_latest(recorded)
    assert ring.written > len(ref)
    assert _best_correlation(recorded, ref) > 0.9  # the same speech came through, at 16 kHz


@pytest.mark.slow
def test_mic_counts_overflows_and_bad_blocks_without_crashing(tmp_path):
    """PulseAudio's ALSA plugin never reports overflows (the server buffers), so the live
    stream gets PortAudio's own overflow flag and a malformed block injected into its callback."""
    sd = pytest.importorskip("sounddevice")
    need("espeak-ng")
    wav = speech_wav(tmp_path / "s.wav", "one two three four five six")
    with virtual_mic() as vm:
        devices = {d["name"]: d["index"] for d in list_audio_devices()}
        ring = AudioRing(20 * SR)
        mic = MicSource(ring, device=devices[vm.device])  # by index
        mic.start()
        try:
            _wait_flowing(ring)
            vm.play(wav, wait=False)
            flags = sd.CallbackFlags()
            flags.input_overflow = True
            # empty / malformed blocks: they fail before touching the stream's resampler state
            mic._callback(np.zeros((0, mic.channels), np.float32), 0, None, flags)
            mic._callback(np.zeros((4, 2, 2), np.float32), 4, None, sd.CallbackFlags())
            time.sleep(1.0)
        finally:
            mic.stop()
    assert mic.overflows == 1 and mic.errors == 1
    assert ring.written > 0.5 * SR  # the stream kept running
