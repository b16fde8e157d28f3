"""`--serve [HOST:]PORT`: a local web view of the running stream (stdlib http.server + numpy).

Routes (GET; nothing else exists, no file is ever served from disk):
  /         one self-contained HTML page (edge/assets/live.html: inline JS/CSS, it talks to
            this server only): live frame, fused/voice/face labels with confidence bars,
            voiced or not, a 60 s canvas timeline of the fused probabilities, hop latency, RSS
  /events   server-sent events: per hop `data: <the hop's JSON line>` (the object `run`
            prints), then `event: rss` with `{"rss_mb": ...}` of this process; `event: end`
            when the stream stops
  /frame    the newest frame as an RGB PNG (zlib, Up filter) with the face box drawn,
            downscaled by an integer step to at most MAX_SIDE px; 204 when there is none

Contract with the loop (edge/stream.py calls `publish` once per hop, from the loop thread):
  `publish(result, frame)` takes the `Result` by reference (results are never changed after
  they are yielded) and copies `frame` ((H, W, 3) uint8 BGR, one shape for the stream; the
  caller's buffer, which it reuses after the call) into one of three slots allocated at the
  first frame (a triple buffer). The lock it takes guards only an index swap and a reference swap: the loop never
  waits on a client, never encodes and allocates nothing per hop.
  Server threads (one per connection, at most 2 * max_clients connections, at most
  `max_clients` event streams; more get 503) do the work: JSON from the result reference,
  PNG at most once per hop into buffers allocated at the first frame. An event stream only
  ever sends the newest hop (a client that falls behind skips hops: one result buffered per
  client); a client whose request or any one write takes over `send_timeout_s` is dropped.

Safety: binds 127.0.0.1 unless a host is given. A loopback server answers only requests
whose Host is a loopback name (no DNS rebinding from a web page). Any other host gets a
random token that every request must carry (`?token=...`, else 403). Unknown paths 404.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import os
import secrets
import socket
import struct
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import numpy as np

from edge.errors import ConfigError

if TYPE_CHECKING:
    from edge.pipeline import Result

DEFAULT_HOST = "127.0.0.1"
MAX_SIDE = 640
"""Largest side of a /frame PNG, px; bigger frames are sent at every 2nd, 3rd, ... pixel."""
PNG_LEVEL = 1
"""zlib level: the fastest; a 480x360 frame is still only a few hundred kB."""
KEEPALIVE_S = 5.0
"""An event stream sends a comment after this long without a hop (keeps proxies and tunnels open)."""
SEND_TIMEOUT_S = 5.0
"""A client whose request or any one write does not complete within this long is dropped."""
SEND_BUFFER_BYTES = 64 * 1024
"""Kernel send buffer per connection: bounds what a client that never reads can hold up."""
CLOSE_WAIT_S = 1.0
"""How long `stop()` gives open pages to receive `event: end`."""
BOX_RGB = (60, 200, 60)
PAGE = Path(__file__).resolve().parent / "assets" / "live.html"


def parse_address(spec: str | int) -> tuple[str, int]:
    """`8080`, `0.0.0.0:8080`, `[::1]:8080` -> (host, port); the host defaults to 127.0.0.1."""
    text = str(spec).strip()
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or DEFAULT_HOST
    if not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--serve {text!r}: expected [HOST:]PORT, e.g. 8080 or 0.0.0.0:8080")
    return host, int(port)


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def rss_mb() -> float:
    """This process's resident set size, MB (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PngEncoder:
    """BGR frames of one shape -> PNG bytes, with the face box drawn; buffers allocated once."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.step = -(-max(shape[:2]) // MAX_SIDE)
        h, w = -(-shape[0] // self.step), -(-shape[1] // self.step)
        self.rgb = np.zeros((h, w, 3), np.uint8)
        self.rows = np.zeros((h, 1 + 3 * w), np.uint8)
        self.rows[:, 0] = 2  # PNG filter "Up": each row minus the row above (mod 256)
        self.header = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))

    def encode(self, bgr: np.ndarray, box: list[int] | None) -> bytes:
        np.copyto(self.rgb, bgr[::self.step, ::self.step, ::-1])
        if box is not None:
            self._draw_box(*(v // self.step for v in box))
        flat = self.rgb.reshape(len(self.rgb), -1)
        self.rows[0, 1:] = flat[0]
        np.subtract(flat[1:], flat[:-1], out=self.rows[1:, 1:])
        return self.header + _chunk(b"IDAT", zlib.compress(self.rows, PNG_LEVEL)) + _chunk(b"IEND", b"")

    def _draw_box(self, x: int, y: int, w: int, h: int, t: int = 2) -> None:
        img = self.rgb
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(img.shape[1], x + w), min(img.shape[0], y + h)
        if x1 - x0 < 2 * t or y1 - y0 < 2 * t:
            return
        for rows, cols in ((slice(y0, y0 + t), slice(x0, x1)), (slice(y1 - t, y1), slice(x0, x1)),
                           (slice(y0, y1), slice(x0, x0 + t)), (slice(y0, y1), slice(x1 - t, x1))):
            img[rows, cols] = BOX_RGB


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


class Latest:
    """The newest hop, shared by the loop (writer) and the server threads (readers)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.seq, self.result, self.closed = 0, None, False
        self._slots: list[np.ndarray] | None = None
        self._boxes: list[list[int] | None] = [None, None, None]
        self._seqs = [0, 0, 0]
        self._back, self._middle, self._front = 0, 1, 2
        self._encode_lock = threading.Lock()
        self._png: tuple[int, bytes] = (0, b"")
        self._encoder: PngEncoder | None = None

    def publish(self, result: Result, frame: np.ndarray | None) -> None:
        """Loop side, once per hop: copy the frame (always of one shape) into the back slot,
        then swap it in."""
        if frame is not None:
            if self._slots is None:
                self._slots = [np.zeros_like(frame) for _ in range(3)]
            np.copyto(self._slots[self._back], frame)
        with self.cond:
            self.seq += 1
            self.result = result
            if frame is not None:
                back = self._back
                self._boxes[back] = result.face["box"] if result.face else None
                self._seqs[back] = self.seq
                self._back, self._middle = self._middle, back
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def wait(self, seen: int, timeout: float) -> tuple[int, Result | None]:
        """Server side: the newest (seq, result) after `seen`, or (seen, None) on timeout/close."""
        with self.cond:
            self.cond.wait_for(lambda: self.seq > seen or self.closed, timeout)
            return (self.seq, self.result) if self.seq > seen else (seen, None)

    def png(self) -> bytes | None:
        """Server side: the newest frame as PNG, encoded once per hop; None before any frame."""
        with self._encode_lock:  # one encoder at a time: it alone reads the front slot
            with self.cond:
                if self._seqs[self._middle] > self._seqs[self._front]:
                    self._front, self._middle = self._middle, self._front
                front, seq, box = self._front, self._seqs[self._front], self._boxes[self._front]
            if seq == 0:
                return None
            if self._png[0] != seq:
                frame = self._slots[front]
                self._encoder = self._encoder or PngEncoder(frame.shape)
                self._png = (seq, self._encoder.encode(frame, box))
            return self._png[1]


class _Handler(BaseHTTPRequestHandler):
    server: "_HTTPServer"
    server_version, sys_version = "avemo-edge", ""

    def setup(self) -> None:
        self.timeout = self.server.owner.send_timeout_s  # reads and writes: a stalled client is dropped
        super().setup()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stderr is the loop's
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        status = self.server.owner.refuse(parse_qs(url.query).get("token", [""])[0], self.headers.get("Host"))
        route = {"/": self._page, "/events": self._events, "/frame": self._frame}.get(url.path)
        if status or route is None:
            self._send(status or 404, "text/plain; charset=utf-8", b"forbidden\n" if status else b"not found\n")
        else:
            route()

    def _send(self, status: int, kind: str, body: bytes, *headers: tuple[str, str]) -> None:
        self.send_response(status)
        for name, value in (("Content-Type", kind), ("Content-Length", str(len(body))), *headers,
                            ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                            ("Referrer-Policy", "no-referrer")):
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _page(self) -> None:
        policy = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                  "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'")
        self._send(200, "text/html; charset=utf-8", self.server.owner.page, ("Content-Security-Policy", policy))

    def _frame(self) -> None:
        png = self.server.owner.latest.png()
        self._send(204 if png is None else 200, "image/png", png or b"")

    def _events(self) -> None:
        owner = self.server.owner
        if not owner.enter_stream():
            self._send(503, "text/plain; charset=utf-8", b"too many viewers (profile serve.max_clients)\n")
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self._stream(owner.latest)
        finally:
            owner.leave_stream()

    def _stream(self, latest: Latest) -> None:
        """One client's event stream: always the newest hop, never a backlog."""
        seen = 0
        while True:
            seen, result = latest.wait(seen, KEEPALIVE_S)
            if result is not None:
                self.wfile.write(f"data: {result.to_json()}\n\nevent: rss\ndata: "
                                 f"{json.dumps({'rss_mb': round(rss_mb(), 1)})}\n\n".encode())
            elif latest.closed:
                self.wfile.write(b"event: end\ndata: {}\n\n")
                return
            else:
                self.wfile.write(b": keepalive\n\n")


class _HTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most `2 * max_clients` of them (more are answered 503)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], owner: "LiveServer") -> None:
        self.owner = owner
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.connections = threading.BoundedSemaphore(2 * owner.max_clients)
        super().__init__(address, _Handler)

    def process_request(self, request: socket.socket, client_address) -> None:
        if not self.connections.acquire(blocking=False):
            _refuse(request)
            self.shutdown_request(request)
            return
        request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    def handle_error(self, request, client_address) -> None:
        """A client that went away or stalled (OSError) is dropped silently; anything else is a bug."""
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            print(f"avemo-edge: warning: --serve: {type(error).__name__}: {error}", file=sys.stderr)


def _refuse(request: socket.socket) -> None:
    """Answer 503 without waiting: the accept thread must never block on a client."""
    try:
        request.setblocking(False)
        request.send(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    except OSError:
        pass


def _host_name(header: str) -> str:
    """The host of a Host header: `[::1]:8080` -> `::1`, `localhost:8080` -> `localhost`."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if ":" in header else header


class LiveServer:
    """The web view of one stream. `start()` listens (a daemon thread), `publish()` is the
    loop's once-per-hop hand-off, `stop()` ends the event streams and stops listening."""

    def __init__(self, address: str | int, max_clients: int, send_timeout_s: float = SEND_TIMEOUT_S) -> None:
        self.host, self.port = parse_address(address)
        self.token = None if is_loopback(self.host) else secrets.token_urlsafe(16)
        self.max_clients, self.send_timeout_s = max_clients, send_timeout_s
        self.latest = Latest()
        self.page = PAGE.read_bytes()
        self.streams = 0
        self._lock = threading.Lock()
        self._httpd: _HTTPServer | None = None

    @property
    def url(self) -> str:
        shown = socket.gethostname() if self.host in ("0.0.0.0", "::") else self.host
        shown = f"[{shown}]" if ":" in shown else shown
        return f"http://{shown}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def start(self) -> None:
        try:
            self._httpd = _HTTPServer((self.host, self.port), self)
        except OSError as err:
            raise ConfigError(f"--serve {self.host}:{self.port}: cannot listen there "
                              f"({err.strerror or err}); pick another port or host") from None
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, args=(0.2,), name="avemo-serve", daemon=True).start()

    def publish(self, result: Result, frame: np.ndarray | None) -> None:
        self.latest.publish(result, frame)

    def stop(self) -> None:
        if self._httpd is None:
            return
        self.latest.close()
        deadline = time.monotonic() + CLOSE_WAIT_S
        while self.streams and time.monotonic() < deadline:  # let open pages hear `end`
            time.sleep(0.02)
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd = None

    def refuse(self, token: str, host: str | None) -> int:
        """403 for a missing/wrong token, or a loopback server asked under a foreign Host; else 0."""
        if self.token is not None:
            return 0 if hmac.compare_digest(token.encode(), self.token.encode()) else 403
        return 0 if host is None or is_loopback(_host_name(host)) else 403

    def enter_stream(self) -> bool:
        with self._lock:
            if self.streams >= self.max_clients:
                return False
            self.streams += 1
            return True

    def leave_stream(self) -> None:
        with self._lock:
            self.streams -= 1
