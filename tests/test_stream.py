import numpy as np
import pytest

from conftest import DEMO_VIDEO, DEMO_WAV
from edge.errors import ConfigError, MediaError
from edge.stream import Stream


def test_video_replay_has_both_modalities(bundles):
    with Stream(video=str(DEMO_VIDEO), audio_model=bundles["audio"], face_model=bundles["face"]) as s:
        results = list(s)
    assert len(results) == int(s.replay.seconds / 0.5 + 1e-9)
    assert sum(1 for r in results if r.face) >= len(results) - 1
    assert sum(1 for r in results if r.audio and r.audio["voiced"]) >= len(results) // 2
    assert set(results[-1].counters) == {"audio_overruns", "audio_underruns", "audio_torn",
                                         "frames_dropped", "frames_torn"}


def test_video_without_its_audio(bundles):
    with Stream(video=str(DEMO_VIDEO), audio_model=None, face_model=bundles["face"], duration=1.0) as s:
        results = list(s)
    assert [r.audio for r in results] == [None, None]
    assert all(r.fused for r in results if r.face)


def test_profile_sets_the_hop(bundles):
    with Stream(audio=str(DEMO_WAV), profile="rpi4", duration=2.0, audio_model=bundles["audio"]) as s:
        assert [r.t for r in s] == [0.5, 1.0, 1.5, 2.0]


def test_realtime_replay_is_paced(bundles):
    import time
    start = time.monotonic()
    with Stream(audio=str(DEMO_WAV), duration=1.0, realtime=True, audio_model=bundles["audio"]) as s:
        list(s)
    assert time.monotonic() - start >= 0.95


@pytest.mark.parametrize("kwargs,error,match", [
    ({}, ConfigError, "not both or neither"),
    ({"audio": str(DEMO_WAV), "mic": True}, ConfigError, "not both or neither"),
    ({"audio": str(DEMO_WAV), "hop": 0.0}, ConfigError,
     r"hop \(--hop\) must be a number of seconds from 0.001 to 60, got 0.0"),
    ({"audio": str(DEMO_WAV), "hop": float("nan")}, ConfigError, "from 0.001 to 60, got nan"),
    ({"audio": str(DEMO_WAV), "hop": "0.5"}, ConfigError, "from 0.001 to 60, got '0.5'"),
    ({"audio": str(DEMO_WAV), "duration": float("inf")}, ConfigError, r"duration \(--duration\) .* got inf"),
    ({"audio": str(DEMO_WAV), "duration": -5}, ConfigError, "from 0.5 to 31536000, got -5"),
    ({"camera": -2}, ConfigError, r"camera \(--camera\) index must be a whole number from 0 to 255, got -2"),
    ({"audio": str(DEMO_WAV), "audio_model": None}, ConfigError, "nothing to run"),
])
def test_bad_arguments(kwargs, error, match, bundles):
    with pytest.raises(error, match=match):
        Stream(**kwargs)


def test_empty_audio_file(tmp_path, bundles):
    import wave
    path = tmp_path / "empty.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    with pytest.raises(MediaError, match="empty.wav"):
        Stream(audio=str(path), audio_model=bundles["audio"])


def test_multichannel_44k_wav_is_converted(tmp_path, bundles):
    import wave
    sr = 44100
    t = np.arange(2 * sr) / sr
    stereo = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], 1) * 0.3
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(sr)
        w.writeframes((stereo * 32767).astype("<i2").tobytes())
    with Stream(audio=str(path), audio_model=bundles["audio"]) as s:
        results = list(s)
    # mono = the mean of the channels: RMS 0.3 * 0.5 = -16.5 dBFS; two steady tones are not a voice
    assert len(results) == 4 and results[-1].audio["level_dbfs"] == pytest.approx(-16.5, abs=0.5)
    assert not any(r.audio["voiced"] for r in results)


def test_mic_overflows_and_errors_are_counted_in_the_results(bundles):
    sd = pytest.importorskip("sounddevice")
    from media import virtual_mic
    with virtual_mic():
        with Stream(mic=True, duration=1.0, audio_model=bundles["audio"]) as stream:
            empty = np.zeros((0, stream.mic.channels), np.float32)
            for flag in ("input_overflow", "input_underflow"):  # PulseAudio never reports one:
                flags = sd.CallbackFlags()                      # inject it as PortAudio would
                setattr(flags, flag, True)
                stream.mic._callback(empty, 0, None, flags)
            stream.mic._callback(np.zeros(160, np.float32), 160, None, sd.CallbackFlags())  # not [frames, channels]
            results = list(stream)
    assert results[-1].counters["mic_overflows"] == 1
    assert results[-1].counters["mic_errors"] == 2  # the underflow and the block that failed


def _tear_next_copy(ring, lap) -> None:
    """Make the ring's next copy-out race a producer: `lap()` writes while the copy runs."""
    copy = ring._copy_out

    def racing(*args) -> None:
        ring._copy_out = copy
        lap()
        copy(*args)
    ring._copy_out = racing


def test_torn_reads_are_counted_and_the_loop_goes_on(bundles):
    with Stream(video=str(DEMO_VIDEO), duration=1.0, audio_model=bundles["audio"],
                face_model=bundles["face"]) as s:
        audio, frames = s.audio_ring, s.frame_ring
        _tear_next_copy(audio, lambda: audio.write(np.zeros(audio.capacity, np.float32)))
        _tear_next_copy(frames, lambda: [frames.write(np.zeros(frames.shape, np.uint8), 0.0)
                                         for _ in range(frames.slots)])
        results = list(s)
    assert [r.counters["audio_torn"] for r in results] == [1, 1]
    assert [r.counters["frames_torn"] for r in results] == [1, 1]
    assert results[0].counters["audio_overruns"] == 1  # the lapped window: the newest one was read
    assert results[1].audio["level_dbfs"] > -120  # the next hop reads the stream again


class BadThenGood:
    """A cv2.VideoCapture stand-in: an empty frame, a 2-channel one, then a good one."""

    def __init__(self) -> None:
        self.frames = [np.zeros((0, 0, 3), np.uint8), np.zeros((48, 64, 2), np.uint8), np.full((48, 64, 3), 7, np.uint8)]

    def read(self):
        return (True, self.frames.pop(0)) if self.frames else (False, None)

    def release(self) -> None:
        pass


def test_bad_camera_frames_are_counted_in_the_results(bundles):
    pytest.importorskip("cv2")
    from media import MjpegServer, video_frames

    from edge.video import _OpenCvCapture
    with MjpegServer(list(video_frames(4))) as server:
        with Stream(camera=server.url, duration=0.5, face_model=bundles["face"], capture="opencv") as s:
            s.camera.stop()  # the reader thread paces frames; read the stand-in by hand from here
            frame = np.zeros(s.frame_ring.shape, np.uint8)
            ok, _ = _OpenCvCapture(BadThenGood(), is_file=False, on_bad=s.camera._count_bad).read(frame)
            results = list(s)
    assert ok and frame.max() == 7            # the good frame came through, the two bad ones were skipped
    assert results[-1].counters["frames_bad"] == 2


def test_live_hops_are_stamped_with_the_audio_captured(bundles):
    """Live t is samples captured / 16 kHz, the end of the window read, not the wall clock:
    while no new audio arrives, t stands still however much time passes."""
    stream = Stream(mic=True, hop=0.05, duration=0.2, audio_model=bundles["audio"])  # not started
    stream.audio_ring.write(np.full(20000, 0.1, np.float32))
    assert [r.t for r in stream] == [1.25] * 4
