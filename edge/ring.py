"""Ring buffers between the capture threads and the scheduler: fixed memory, allocated once.

`AudioRing`  in:  float32 mono blocks at `AUDIO.sample_rate`, any length (the mic callback).
             out: `read_latest(out)` copies the newest `len(out)` samples into the caller's
                  float32 buffer, oldest first; `read_latest(out, until)` the ones before
                  sample `until` (counted from the first sample ever written).
`FrameRing`  in:  uint8 BGR frames of the ring's fixed shape (H, W, 3) plus a float64 time.
             out: `read_newest(out)` copies the newest frame into the caller's buffer.

One producer thread and one consumer thread per ring. Neither side ever blocks or allocates:
the producer copies into preallocated storage and never waits for the consumer (old data is
overwritten), the consumer copies out into memory it owns. A read that the producer overwrote
while it was being copied (a torn read) is detected with the producer's claim counter — the
writer announces how far it is about to write before copying and publishes `written` after —
and the copy is retried, so a window is never a mix of old and new data.

Counters (monotonic, for the pipeline's JSON): `written`; AudioRing `overruns` (the producer
lapped samples the consumer had not read yet), `underruns` (fewer samples than asked for:
the head is zero-filled), `torn` (copies retried); FrameRing `dropped` (frames overwritten
before the consumer ever read that far), `torn`.
"""
from __future__ import annotations

import numpy as np

from edge.errors import MediaError

_MAX_RETRIES = 16


class AudioRing:
    """Float32 sample ring, latest-window reads. `capacity` samples, allocated once."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"AudioRing capacity must be >= 1 sample, got {capacity}")
        self.capacity = int(capacity)
        self._buf = np.zeros(self.capacity, np.float32)
        self.clear()

    def clear(self) -> None:
        """Empty the ring and its counters, keeping its memory (a replay starts a new file)."""
        self._buf[:] = 0.0
        self._claimed = 0  # samples the producer has started writing (>= written)
        self.written = 0  # samples completely written
        self._last_read = 0  # value of `written` at the previous read_latest
        self.overruns = 0
        self.underruns = 0
        self.torn = 0

    def write(self, block: np.ndarray) -> None:
        """Producer: append a 1-D block (copied, wrapping). Only the last `capacity` are kept."""
        n = len(block)
        start = self.written
        if n > self.capacity:
            block, start = block[n - self.capacity:], start + n - self.capacity
        self._claimed = self.written + n
        self._copy_in(block, start % self.capacity)
        self.written += n

    def _copy_in(self, block: np.ndarray, pos: int) -> None:
        first = min(len(block), self.capacity - pos)
        self._buf[pos:pos + first] = block[:first]
        self._buf[:len(block) - first] = block[first:]

    def read_latest(self, out: np.ndarray, until: int | None = None) -> int:
        """Consumer: copy the len(out) samples before sample `until` (default and at most:
        the newest) into `out`; return how many were real.

        When fewer samples than len(out) exist, the real ones go at the end, the head is
        zero-filled and an underrun is counted. A window the producer has already
        overwritten (`until` more than capacity - len(out) samples behind) is a ValueError.
        """
        n = len(out)
        if n > self.capacity:
            raise ValueError(f"read_latest wants {n} samples but the AudioRing holds {self.capacity}")
        for _ in range(_MAX_RETRIES):
            written = self.written  # one snapshot: a producer running flat out moves it meanwhile
            end = written if until is None else min(until, written)
            real = min(n, end)
            if end - real < written - self.capacity:
                raise ValueError(f"the {n} samples before sample {until} are no longer in the "
                                 f"AudioRing ({self.written} written, capacity {self.capacity})")
            self._copy_out(out[n - real:], end - real)
            if self._claimed - self.capacity <= end - real:
                return self._account(n, end, real, out)
            self.torn += 1
        raise RuntimeError("AudioRing: producer kept overwriting the window being read")

    def _copy_out(self, out: np.ndarray, start: int) -> None:
        pos = start % self.capacity
        first = min(len(out), self.capacity - pos)
        out[:first] = self._buf[pos:pos + first]
        out[first:] = self._buf[:len(out) - first]

    def _account(self, n: int, end: int, real: int, out: np.ndarray) -> int:
        if end - self._last_read > self.capacity - n:
            self.overruns += 1
        self._last_read = end
        if real < n:
            out[:n - real] = 0.0
            self.underruns += 1
        return real

    def stats(self) -> dict:
        return {"capacity": self.capacity, "written": self.written, "overruns": self.overruns,
                "underruns": self.underruns, "torn": self.torn}


class FrameRing:
    """`slots` uint8 frames of one shape (H, W, 3) with float64 timestamps; drop-oldest."""

    def __init__(self, slots: int, shape: tuple[int, int, int]) -> None:
        if slots < 2:
            raise ValueError(f"FrameRing needs at least 2 slots, got {slots}")
        if len(shape) != 3 or shape[2] != 3 or min(shape) < 1:
            raise ValueError(f"FrameRing shape must be (H, W, 3) with H, W >= 1, got {shape}")
        self.slots = int(slots)
        self.shape = tuple(int(s) for s in shape)
        self._frames = np.zeros((self.slots, *self.shape), np.uint8)
        self._times = np.zeros(self.slots, np.float64)
        self._claimed = 0
        self.written = 0
        self._last_read = -1  # sequence number the consumer last got
        self.dropped = 0
        self.torn = 0

    def write(self, frame: np.ndarray, t: float) -> None:
        """Producer: copy a uint8 (H, W, 3) frame taken at time `t` (seconds) into the next slot."""
        if frame.shape != self.shape or frame.dtype != np.uint8:
            raise MediaError(f"frame of shape {frame.shape} {frame.dtype} does not fit the FrameRing "
                             f"of {self.shape} uint8: convert/resize it before writing")
        seq = self.written
        if seq >= self.slots and seq - self.slots > self._last_read:
            self.dropped += 1
        self._claimed = seq + 1
        slot = seq % self.slots
        self._frames[slot] = frame
        self._times[slot] = t
        self.written = seq + 1

    def read_newest(self, out: np.ndarray) -> tuple[float, int] | None:
        """Consumer: copy the newest frame into `out`; return (timestamp, sequence) or None if empty."""
        for _ in range(_MAX_RETRIES):
            seq = self.written - 1
            if seq < 0:
                return None
            slot = seq % self.slots
            self._copy_out(out, slot)
            t = float(self._times[slot])
            if self._claimed <= seq + self.slots:
                self._last_read = seq
                return t, seq
            self.torn += 1
        raise RuntimeError("FrameRing: producer kept overwriting the frame being read")

    def _copy_out(self, out: np.ndarray, slot: int) -> None:
        out[...] = self._frames[slot]

    def stats(self) -> dict:
        return {"slots": self.slots, "written": self.written, "dropped": self.dropped,
                "torn": self.torn}
