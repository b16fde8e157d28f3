"""AudioRing / FrameRing: wraparound, counters, torn-read detection, real threads, no allocation."""
from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

from edge.errors import MediaError
from edge.ring import AudioRing, FrameRing
from alloc import allocated_by

RING = "from edge.ring import AudioRing, FrameRing"

BLOCK = 320  # 20 ms at 16 kHz


def ramp(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)


def is_ramp(x: np.ndarray) -> bool:
    return bool(np.all(np.diff(x) == 1.0))


@pytest.fixture
def fast_switching():
    """Make the GIL switch threads as often as possible, to provoke torn reads."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def test_audio_push_pop_wraparound():
    ring, out, pos = AudioRing(50), np.empty(20, np.float32), 0
    rng = np.random.default_rng(0)
    for _ in range(123):
        n = int(rng.integers(1, 70))  # includes blocks longer than the ring
        ring.write(ramp(pos, n))
        pos += n
        real = ring.read_latest(out)
        assert real == min(20, pos)
        np.testing.assert_array_equal(out[20 - real:], ramp(pos - real, real))
    assert ring.written == pos


def test_audio_underrun_zero_fills_head():
    ring, out = AudioRing(100), np.full(10, 7.0, np.float32)
    assert ring.read_latest(out) == 0 and ring.underruns == 1 and not out.any()
    ring.write(ramp(1, 4))
    assert ring.read_latest(out) == 4
    np.testing.assert_array_equal(out, [0, 0, 0, 0, 0, 0, 1, 2, 3, 4])
    assert ring.underruns == 2
    ring.write(ramp(5, 6))
    assert ring.read_latest(out) == 10 and ring.underruns == 2


def test_audio_clear_starts_a_new_recording_in_the_same_memory():
    ring, out = AudioRing(8), np.full(4, 7.0, np.float32)
    ring.write(ramp(1, 12))
    ring.read_latest(out)
    buffer = ring._buf
    ring.clear()
    assert ring.written == 0 and ring.overruns == ring.underruns == ring.torn == 0
    assert ring.read_latest(out) == 0 and not out.any()
    ring.write(ramp(1, 2))
    assert ring.read_latest(out) == 2 and ring._buf is buffer
    np.testing.assert_array_equal(out, [0, 0, 1, 2])


def test_audio_overrun_counted_when_producer_laps_the_window():
    ring, out = AudioRing(100), np.empty(40, np.float32)
    ring.write(ramp(0, 60))  # exactly capacity - len(out) new samples: nothing lost
    ring.read_latest(out)
    assert ring.overruns == 0
    ring.write(ramp(60, 61))  # one more than that: unread samples were overwritten
    ring.read_latest(out)
    assert ring.overruns == 1
    assert is_ramp(out) and out[-1] == 120
    assert ring.stats()["overruns"] == 1


def test_audio_read_until_a_sample_ends_the_window_there():
    ring, out = AudioRing(100), np.empty(10, np.float32)
    ring.write(ramp(0, 50))
    assert ring.read_latest(out, until=30) == 10 and out[-1] == 29 and is_ramp(out)
    assert ring.read_latest(out, until=4) == 4 and list(out[-5:]) == [0, 0, 1, 2, 3]
    assert ring.read_latest(out, until=80) == 10 and out[-1] == 49  # past the newest: the newest


def test_audio_read_until_an_overwritten_sample_is_refused():
    ring = AudioRing(100)
    ring.write(ramp(0, 150))
    with pytest.raises(ValueError, match="before sample 55 are no longer"):
        ring.read_latest(np.empty(10, np.float32), until=55)


def test_audio_read_longer_than_capacity_is_refused():
    with pytest.raises(ValueError, match="holds 8"):
        AudioRing(8).read_latest(np.empty(9, np.float32))


class _Saboteur(np.ndarray):
    """An output buffer whose first copy-in is raced by the producer lapping the ring."""

    def __array_finalize__(self, obj) -> None:
        self.hooks = getattr(obj, "hooks", [])  # views share the pending hook

    def __setitem__(self, key, value):
        if self.hooks:
            self.hooks.pop()()
        super().__setitem__(key, value)


def _saboteur(shape, dtype, hook) -> _Saboteur:
    out = np.zeros(shape, dtype).view(_Saboteur)
    out.hooks.append(hook)
    return out


def test_audio_torn_read_detected_and_retried():
    ring = AudioRing(64)
    ring.write(ramp(0, 64))
    out = _saboteur(32, np.float32, lambda: ring.write(ramp(64, 40)))  # overwrites 0..39 mid-copy
    assert ring.read_latest(out) == 32
    assert ring.torn == 1
    np.testing.assert_array_equal(np.asarray(out), ramp(72, 32))


def _produce(ring: AudioRing, n_blocks: int, period: float) -> None:
    start = time.perf_counter()
    for k in range(n_blocks):
        ring.write(ramp(k * BLOCK, BLOCK))
        if period:
            time.sleep(max(0.0, start + (k + 1) * period - time.perf_counter()))


def _consume(ring: AudioRing, window: int, producer: threading.Thread) -> tuple[list[int], int]:
    """Read latest windows until the producer ends; check each; return window ends and torn-free count."""
    out, ends = np.empty(window, np.float32), []
    while producer.is_alive():
        real = ring.read_latest(out)
        assert is_ramp(out[window - real:]), "window mixes old and new samples"
        assert not out[:window - real].any()
        if real:
            ends.append(int(out[-1]) + 1)
        time.sleep(0.0005)
    return ends, real


def _expected_overruns(ends: list[int], capacity: int, window: int) -> int:
    return sum(1 for a, b in zip([0] + ends, ends) if b - a > capacity - window)


def test_audio_threads_at_audio_rate():
    ring, window = AudioRing(16000), 8000
    producer = threading.Thread(target=_produce, args=(ring, 50, BLOCK / 16000))
    producer.start()
    ends, _ = _consume(ring, window, producer)
    producer.join()
    assert ring.written == 50 * BLOCK
    assert ring.overruns == 0 and ring.torn == 0
    assert ring.underruns >= 1  # the first reads find less than 0.5 s
    assert len(ends) > 20


def test_audio_threads_flat_out_never_mix(fast_switching):
    capacity, window = 4 * BLOCK, 3 * BLOCK
    ring = AudioRing(capacity)
    producer = threading.Thread(target=_produce, args=(ring, 20000, 0.0))
    producer.start()
    ends, _ = _consume(ring, window, producer)
    producer.join()
    assert len(ends) > 10
    assert ring.overruns == _expected_overruns(ends, capacity, window)
    assert ring.overruns > 0


def test_audio_write_and_read_allocate_nothing():
    peak, held = allocated_by(RING, "ring, block, out = AudioRing(48000), np.ones(4096, np.float32), "
                               "np.empty(16000, np.float32)",
                               "ring.write(block); ring.read_latest(out)")
    assert peak < 2048, "a write or read copied a block (16 KB) through new memory"
    assert held < 512


def frame(value: int, shape=(24, 32, 3)) -> np.ndarray:
    return np.full(shape, value % 256, np.uint8)


def test_frame_ring_newest_and_empty():
    ring, out = FrameRing(3, (24, 32, 3)), np.empty((24, 32, 3), np.uint8)
    assert ring.read_newest(out) is None
    for i in range(7):
        ring.write(frame(i), 100.0 + i)
    assert ring.read_newest(out) == (106.0, 6)
    assert (out == 6).all()
    assert ring.written == 7


def test_frame_ring_drops_only_unread_frames():
    ring, out = FrameRing(4, (24, 32, 3)), np.empty((24, 32, 3), np.uint8)
    for i in range(10):
        ring.write(frame(i), i)
    assert ring.dropped == 6  # frames 0..5 overwritten before any read
    assert ring.read_newest(out) == (9.0, 9)
    for i in range(10, 14):
        ring.write(frame(i), i)  # overwrite 6..9: the consumer already read past them
    assert ring.dropped == 6
    ring.write(frame(14), 14)  # overwrites 10, never read
    assert ring.dropped == 7
    assert ring.stats() == {"slots": 4, "written": 15, "dropped": 7, "torn": 0}


def test_frame_ring_rejects_other_shapes():
    ring = FrameRing(2, (24, 32, 3))
    with pytest.raises(MediaError, match=r"\(24, 33, 3\).*\(24, 32, 3\)"):
        ring.write(np.zeros((24, 33, 3), np.uint8), 0.0)
    with pytest.raises(MediaError, match="float32"):
        ring.write(np.zeros((24, 32, 3), np.float32), 0.0)
    with pytest.raises(ValueError):
        FrameRing(2, (24, 32))


def test_frame_torn_read_detected_and_retried():
    ring = FrameRing(2, (4, 4, 3))
    ring.write(frame(1, (4, 4, 3)), 1.0)

    def lap():
        ring.write(frame(2, (4, 4, 3)), 2.0)
        ring.write(frame(3, (4, 4, 3)), 3.0)  # reuses the slot being read

    out = _saboteur((4, 4, 3), np.uint8, lap)
    assert ring.read_newest(out) == (3.0, 2)
    assert ring.torn == 1 and (np.asarray(out) == 3).all()


def test_frame_threads_never_torn(fast_switching):
    shape = (240, 320, 3)
    ring, out, n = FrameRing(3, shape), np.empty(shape, np.uint8), 3000
    frames = [frame(i, shape) for i in range(256)]

    def produce():
        for i in range(n):
            ring.write(frames[i % 256], float(i))

    producer = threading.Thread(target=produce)
    producer.start()
    reads = 0
    while producer.is_alive():
        got = ring.read_newest(out)
        if got is not None:
            t, seq = got
            assert t == seq and out.min() == out.max() == seq % 256, "frame mixes two writes"
            reads += 1
    producer.join()
    assert reads > 10 and ring.written == n


def test_frame_write_allocates_nothing():
    peak, held = allocated_by(RING, "ring, img = FrameRing(4, (240, 320, 3)), np.full((240, 320, 3), 5, np.uint8)\n"
                               "out, i = np.empty_like(img), 0",
                               "ring.write(img, float(i)); ring.read_newest(out)")
    assert peak < 2048 and held < 512
