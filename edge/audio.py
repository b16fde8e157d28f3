"""Audio sources: files, a video's own audio track, the microphone; all -> 16 kHz mono float32.

In:  a file path (WAV parsed here with numpy; FLAC/OGG via soundfile; anything else via
     ffmpeg), or a sounddevice input device at its native rate and channel count.
Out: `read_audio` / `read_video_audio` return a new float32 array [n] in [-1, 1] at
     `AUDIO.sample_rate` (the caller owns it). `MicSource` converts each callback block to
     mono, resamples it with a `StreamResampler` into a preallocated buffer and writes it to
     an `AudioRing`; nothing is allocated per block in steady state.

Resampling is windowed-sinc (Kaiser window) polyphase: each output sample is a dot product
of `2 * half` input samples with one of `up` precomputed filter phases. `resample` is the
same `StreamResampler` run over the whole signal, so offline and streaming outputs agree.
Errors: `MediaError` names the file and the problem; `DeviceError` names the device.
"""
from __future__ import annotations

import math
import shutil
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np

from edge.errors import AvemoError, DeviceError, MediaError
from edge.ring import AudioRing
from edge.settings import AUDIO

_CAPTURE_HINT = "pip install avemo-edge[capture]"
_ZEROS = 16  # sinc zero crossings on each side of the filter
_ROLLOFF = 0.95  # cutoff as a fraction of the lower Nyquist frequency
_KAISER_BETA = 8.6
_MAX_PHASES = 1024  # odd rate ratios are approximated by the nearest with <= 1024 phases
_RATE_RANGE = (1000, 768000)
_OFFLINE_CHUNK = 8192
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
_INT_SCALE = {8: 128.0, 16: 32768.0, 24: 8388608.0, 32: 2147483648.0}


# --- resampling ---------------------------------------------------------------------------

def _filter_table(sr_in: int, sr_out: int) -> tuple[np.ndarray, int, int, int]:
    """Polyphase table float32 [up, 2*half], with up, down and half (input samples per side)."""
    ratio = Fraction(sr_in, sr_out).limit_denominator(_MAX_PHASES)
    up, down = ratio.denominator, ratio.numerator
    fc = 0.5 if up == down else _ROLLOFF * 0.5 * min(1.0, up / down)  # cycles per input sample
    half = int(math.ceil(_ZEROS / (2.0 * fc))) + 1
    frac = np.arange(up, dtype=np.float64)[:, None] / up
    d = frac + (half - 1) - np.arange(2 * half)[None, :]  # distance to each tap, input samples
    x = np.clip(d / (_ZEROS / (2.0 * fc)), -1.0, 1.0)
    window = np.i0(_KAISER_BETA * np.sqrt(1.0 - x * x)) / np.i0(_KAISER_BETA)
    return (2.0 * fc * np.sinc(2.0 * fc * d) * window).astype(np.float32), up, down, half


class StreamResampler:
    """Stateful block resampler: `process(block)` -> the output samples that block completes.

    Blocks are 1-D float32 of at most `max_block` samples. The returned array is a view of an
    internal buffer, overwritten by the next call. Output lags input by `half` input samples.
    """

    def __init__(self, sr_in: int, sr_out: int = AUDIO.sample_rate, max_block: int = 4096) -> None:
        if sr_in < 1 or sr_out < 1 or max_block < 1:
            raise ValueError(f"bad resampler settings: {sr_in} Hz -> {sr_out} Hz, block {max_block}")
        self.sr_in, self.sr_out, self.max_block = int(sr_in), int(sr_out), int(max_block)
        self.table, self.up, self.down, self.half = _filter_table(self.sr_in, self.sr_out)
        taps = 2 * self.half
        self.max_out = max_out = max_block * self.up // self.down + 2
        self._hist = np.zeros(2 * (taps + max_block) + max_block, np.float32)
        self._n_hist = self.half - 1  # zeros standing for the samples before the first one
        self._g0 = -(self.half - 1)  # global index of _hist[0]
        self._q_base = 0  # input index of the current phase cycle's origin (Q * down)
        self._r = 0  # output index within the phase cycle
        self._j = np.arange(max_out, dtype=np.int64)
        self._idx = np.empty(max_out, np.int64)
        grid = np.indices((max_out, taps), dtype=np.int64)  # row j, tap k
        self._row, self._tap = grid[0].copy(), grid[1].copy()
        self._gather = np.empty((max_out, taps), np.int64)
        self._phase = np.empty(max_out, np.int64)
        self._win = np.empty((max_out, taps), np.float32)
        self._coef = np.empty((max_out, taps), np.float32)
        self._out = np.empty(max_out, np.float32)

    def process(self, block: np.ndarray) -> np.ndarray:
        """Feed one block; return the new output samples (a view, valid until the next call)."""
        if len(block) > self.max_block:
            raise ValueError(f"block of {len(block)} samples exceeds max_block={self.max_block}")
        self._append(block)
        n = self._n_ready()
        if n == 0:
            return self._out[:0]
        self._compute(n)
        self._advance(n)
        return self._out[:n]

    def _append(self, block: np.ndarray) -> None:
        if self._n_hist + len(block) > len(self._hist):
            keep_from = self._q_base + (self._r * self.down) // self.up - self.half + 1 - self._g0
            kept = self._n_hist - keep_from
            self._hist[:kept] = self._hist[keep_from:self._n_hist]
            self._n_hist, self._g0 = kept, self._g0 + keep_from
        self._hist[self._n_hist:self._n_hist + len(block)] = block
        self._n_hist += len(block)

    def _n_ready(self) -> int:
        last_input = self._g0 + self._n_hist - 1
        limit = last_input - self.half - self._q_base  # floor((r + j) * down / up) <= limit
        if limit < 0:
            return 0
        n = (limit * self.up + self.up - 1) // self.down - self._r + 1
        return min(max(0, n), len(self._out))

    def _compute(self, n: int) -> None:
        idx, phase, j = self._idx[:n], self._phase[:n], self._j[:n]
        np.add(j, self._r, out=idx)
        np.multiply(idx, self.down, out=idx)
        np.remainder(idx, self.up, out=phase)
        np.floor_divide(idx, self.up, out=idx)
        np.add(idx, self._q_base - self.half + 1 - self._g0, out=idx)
        gather = self._gather[:n]  # gather[j, k] = idx[j] + k, without broadcasting buffers
        np.take(idx, self._row[:n], out=gather, mode="clip")
        np.add(gather, self._tap[:n], out=gather)
        np.take(self._hist, gather, out=self._win[:n], mode="clip")
        np.take(self.table, phase, axis=0, out=self._coef[:n], mode="clip")
        np.multiply(self._win[:n], self._coef[:n], out=self._win[:n])
        np.sum(self._win[:n], axis=1, out=self._out[:n])

    def _advance(self, n: int) -> None:
        cycles, self._r = divmod(self._r + n, self.up)
        self._q_base += cycles * self.down


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a 1-D signal (windowed-sinc polyphase); returns float32 [ceil(n * sr_out / sr_in)]."""
    x = np.asarray(x, dtype=np.float32)
    if sr_in == sr_out:
        return x.copy()
    rs = StreamResampler(sr_in, sr_out, _OFFLINE_CHUNK)
    n_out = -(-len(x) * rs.up // rs.down)
    out = np.empty(n_out + rs.max_out, np.float32)
    filled = 0
    tail = np.zeros(2 * rs.half + 1, np.float32)
    for start in range(0, len(x), _OFFLINE_CHUNK):
        filled += _put(out, filled, rs.process(x[start:start + _OFFLINE_CHUNK]))
    filled += _put(out, filled, rs.process(tail))
    return out[:n_out].copy()


def _put(out: np.ndarray, at: int, y: np.ndarray) -> int:
    out[at:at + len(y)] = y
    return len(y)


# --- files --------------------------------------------------------------------------------

def read_audio(path: str | Path) -> np.ndarray:
    """Read an audio file as float32 mono at AUDIO.sample_rate; MediaError when it cannot."""
    path = Path(path)
    head = _head(path)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        x, sr = _read_wav(path)
    elif head[:4] in (b"fLaC", b"OggS"):
        x, sr = _read_soundfile(path)
    else:
        return _nonempty(_ffmpeg_decode(path, audio_only=True), path)
    return _nonempty(resample(x, sr, AUDIO.sample_rate), path)


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise MediaError(f"{path}: cannot read audio file ({e.strerror or e})") from None
    if not head:
        raise MediaError(f"{path}: empty file (0 bytes), not audio")
    return head


def _nonempty(x: np.ndarray, path: Path) -> np.ndarray:
    if len(x) == 0:
        raise MediaError(f"{path}: contains no audio samples")
    return x


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    data = path.read_bytes()
    fmt, body = _wav_chunks(data, path)
    tag, channels, rate, block, bits = fmt
    if tag not in (_PCM, _FLOAT) or (tag == _PCM and bits not in _INT_SCALE) \
            or (tag == _FLOAT and bits not in (32, 64)):
        return _ffmpeg_decode(path, audio_only=True), AUDIO.sample_rate
    if not _RATE_RANGE[0] <= rate <= _RATE_RANGE[1]:
        raise MediaError(f"{path}: unsupported WAV sample rate {rate} Hz "
                         f"(supported {_RATE_RANGE[0]}..{_RATE_RANGE[1]})")
    if channels < 1 or block != channels * bits // 8:
        raise MediaError(f"{path}: bad WAV header ({channels} channels, {rate} Hz, "
                         f"block {block} bytes for {bits}-bit samples)")
    frames = _decode_pcm(body[:len(body) - len(body) % block], tag, bits)
    return frames.reshape(-1, channels).mean(axis=1, dtype=np.float32), rate


def _wav_chunks(data: bytes, path: Path) -> tuple[tuple[int, int, int, int, int], memoryview]:
    """Walk the RIFF chunks; return (tag, channels, rate, block_align, bits) and the data bytes."""
    view, pos, fmt = memoryview(data), 12, None
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        start = pos + 8
        if cid == b"fmt ":
            fmt = _parse_fmt(data[start:start + size], path)
        elif cid == b"data":
            if fmt is None:
                raise MediaError(f"{path}: WAV 'data' chunk comes before its 'fmt ' chunk")
            return fmt, _data_bytes(view, start, size, path)
        pos = start + size + (size & 1)
    missing = "'fmt '" if fmt is None else "'data'"
    raise MediaError(f"{path}: not a complete WAV file (no {missing} chunk; truncated or corrupt)")


def _parse_fmt(chunk: bytes, path: Path) -> tuple[int, int, int, int, int]:
    if len(chunk) < 16:
        raise MediaError(f"{path}: WAV 'fmt ' chunk is {len(chunk)} bytes, needs 16 (corrupt header)")
    tag, channels, rate, _, block, bits = struct.unpack_from("<HHIIHH", chunk)
    if tag == _EXTENSIBLE and len(chunk) >= 26:
        tag = struct.unpack_from("<H", chunk, 24)[0]
    return tag, channels, rate, block, bits


def _data_bytes(view: memoryview, start: int, size: int, path: Path) -> memoryview:
    have = len(view) - start
    if size == 0xFFFFFFFF:  # streaming writers leave the size unknown
        size = have
    if size > have:
        raise MediaError(f"{path}: truncated WAV: header says {size} bytes of audio, "
                         f"file has {max(have, 0)}")
    return view[start:start + size]


def _decode_pcm(raw: memoryview, tag: int, bits: int) -> np.ndarray:
    if tag == _FLOAT:
        return np.frombuffer(raw, "<f4" if bits == 32 else "<f8").astype(np.float32)
    if bits == 8:
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if bits == 24:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        wide = np.zeros((len(b), 4), np.uint8)
        wide[:, 1:] = b  # little-endian int32 holding sample << 8
        return wide.view("<i4")[:, 0].astype(np.float32) / (_INT_SCALE[24] * 256.0)
    return np.frombuffer(raw, f"<i{bits // 8}").astype(np.float32) / _INT_SCALE[bits]


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    try:
        import soundfile as sf
    except (ImportError, OSError):
        return _ffmpeg_decode(path, audio_only=True), AUDIO.sample_rate
    try:
        with sf.SoundFile(str(path)) as f:
            expected, rate = f.frames, f.samplerate
            x = f.read(dtype="float32", always_2d=True)
    except (RuntimeError, ValueError) as e:
        raise MediaError(f"{path}: cannot decode audio, corrupt or truncated "
                         f"({_one_line(str(e))})") from None
    if len(x) < expected:
        raise MediaError(f"{path}: truncated: header says {expected} frames, decoded {len(x)}")
    return x.mean(axis=1, dtype=np.float32), rate


def read_video_audio(path: str | Path) -> np.ndarray | None:
    """A video file's own audio track as float32 mono 16 kHz; None when it has no audio track."""
    path = Path(path)
    _head(path)
    return _ffmpeg_decode(path, audio_only=False)


def _ffmpeg_decode(path: Path, audio_only: bool) -> np.ndarray | None:
    """Decode the first audio stream with ffmpeg; None (video) or MediaError when it has none."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise MediaError(f"{path}: needs ffmpeg to decode this format, and ffmpeg is not "
                         "installed (apt install ffmpeg)")
    cmd = [exe, "-v", "error", "-nostdin", "-i", str(path), "-vn", "-ac", "1",
           "-ar", str(AUDIO.sample_rate), "-f", "f32le", "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    err = _one_line(proc.stderr.decode("utf-8", "replace"))
    if proc.returncode != 0 and "does not contain any stream" in err:
        if audio_only:
            raise MediaError(f"{path}: has no audio stream")
        return None
    if proc.returncode != 0:
        raise MediaError(f"{path}: unsupported or corrupt media (ffmpeg: {err or 'failed'})")
    return np.frombuffer(proc.stdout, "<f4", len(proc.stdout) // 4).copy()


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# --- microphone ---------------------------------------------------------------------------

def _sounddevice():
    try:
        import sounddevice
    except (ImportError, OSError) as e:
        raise AvemoError(f"microphone capture needs sounddevice and PortAudio: `{_CAPTURE_HINT}` "
                         f"and `apt install libportaudio2` ({_one_line(str(e))})") from None
    return sounddevice


def list_audio_devices() -> list[dict]:
    """Input devices: [{index, name, channels, default_rate}]."""
    sd = _sounddevice()
    return [{"index": i, "name": d["name"], "channels": d["max_input_channels"],
             "default_rate": d["default_samplerate"]}
            for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0]


class MicSource:
    """Microphone -> 16 kHz mono -> AudioRing, from the sounddevice callback thread.

    `device` is an index (int or digit string), a (sub)string of the device name, or None for
    the default input.
    The device is opened at its default rate with one channel when it allows that, else with
    all of its channels (averaged to mono). PortAudio input overflows are counted in
    `overflows`; blocks PortAudio flags as input underflow (zeros inserted) and errors inside
    the callback are counted in `errors`, never raised.
    """

    def __init__(self, ring: AudioRing, device: int | str | None = None, block_s: float = 0.02) -> None:
        self.ring = ring
        self.device = int(device) if isinstance(device, str) and device.strip().isdigit() else device
        self.block_s = block_s
        self.overflows = 0
        self.errors = 0
        self.rate = 0
        self.channels = 0
        self.name = ""
        self._stream = None
        self._resampler: StreamResampler | None = None
        self._mono = np.empty(0, np.float32)

    def start(self) -> None:
        """Open and start the input stream; DeviceError when the device does not exist or fails."""
        sd = _sounddevice()
        info = self._query(sd)
        self.name, self.rate = info["name"], int(info["default_samplerate"])
        self.channels = self._pick_channels(sd, info)
        block = max(1, round(self.block_s * self.rate))
        self._resampler = StreamResampler(self.rate, AUDIO.sample_rate, block)
        self._mono = np.zeros(block, np.float32)
        try:
            self._stream = sd.InputStream(device=info["index"], channels=self.channels,
                                          samplerate=self.rate, blocksize=block,
                                          dtype="float32", callback=self._callback)
            self._stream.start()
        except sd.PortAudioError as e:
            raise DeviceError(f"microphone {self.device!r} ({self.name}) failed to start: "
                              f"{_one_line(str(e))}; run `avemo-edge info` to list devices") from None

    def _query(self, sd) -> dict:
        try:
            return sd.query_devices(self.device, "input")
        except (ValueError, sd.PortAudioError) as e:
            which = "default input device" if self.device is None else f"input device {self.device!r}"
            raise DeviceError(f"no {which} ({_one_line(str(e))}); "
                              "run `avemo-edge info` to list devices") from None

    def _pick_channels(self, sd, info: dict) -> int:
        try:
            sd.check_input_settings(device=info["index"], channels=1, samplerate=self.rate,
                                    dtype="float32")
            return 1
        except (ValueError, sd.PortAudioError):
            return int(info["max_input_channels"])

    def _callback(self, indata: np.ndarray, frames: int, _time, status) -> None:
        if status.input_overflow:
            self.overflows += 1
        if status.input_underflow:
            self.errors += 1
        try:
            for start in range(0, frames, len(self._mono)):
                self._push(indata[start:start + len(self._mono)])
        except Exception:  # a bad block must never kill the audio thread
            self.errors += 1

    def _push(self, block: np.ndarray) -> None:
        mono = self._mono[:len(block)]
        if block.shape[1] == 1:
            mono[:] = block[:, 0]
        else:
            np.mean(block, axis=1, out=mono)
        self.ring.write(self._resampler.process(mono))

    def stop(self) -> None:
        """Stop and close the stream (idempotent)."""
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None
