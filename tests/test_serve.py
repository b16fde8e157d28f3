"""`--serve`: the live web view (edge/serve.py), driven through the CLI, the API and a browser."""
from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
import zlib
from urllib.parse import urlsplit

import numpy as np
import pytest

import edge
from alloc import allocated_by
from chromium import Page, find_chromium
from conftest import DEMO_VIDEO, DEMO_WAV
from edge.errors import ConfigError
from edge.serve import BOX_RGB, PngEncoder, parse_address

CLI = [sys.executable, "-m", "edge.cli"]
CANVAS_BG = (32, 23, 15)  # the timeline canvas background #0f1720, as BGR


def get(port: int, path: str, host: str | None = None, method: str = "GET") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=host is not None)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def decode_png(data: bytes) -> np.ndarray:
    """An 8-bit RGB PNG whose rows all use the Up filter (what PngEncoder writes) -> (H, W, 3)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    idat_len = int.from_bytes(data[33:37], "big")
    assert data[37:41] == b"IDAT"
    rows = np.frombuffer(zlib.decompress(data[41:41 + idat_len]), np.uint8).reshape(h, 1 + 3 * w)
    assert (rows[:, 0] == 2).all()
    return np.cumsum(rows[:, 1:], axis=0, dtype=np.uint8).reshape(h, w, 3)


@pytest.mark.parametrize("spec,address", [(8080, ("127.0.0.1", 8080)), ("0.0.0.0:8080", ("0.0.0.0", 8080)),
                                          ("[::1]:0", ("::1", 0)), (" localhost:9 ", ("localhost", 9))])
def test_parse_address(spec, address):
    assert parse_address(spec) == address


@pytest.mark.parametrize("spec", ["", "http", "host:", "1.2.3.4:99999", "8080/x"])
def test_bad_address_is_named(spec):
    with pytest.raises(ConfigError, match=r"--serve .*expected \[HOST:\]PORT"):
        parse_address(spec)


def test_png_round_trip_with_box_and_downscale():
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (720, 1280, 3), np.uint8)
    enc = PngEncoder(bgr.shape)
    rgb = decode_png(enc.encode(bgr, [100, 50, 200, 120]))
    assert rgb.shape == (360, 640, 3)  # every 2nd pixel: at most MAX_SIDE = 640
    expected = bgr[::2, ::2, ::-1].copy()
    box = np.zeros(rgb.shape[:2], bool)
    box[25:85, 50:150] = True
    box[27:83, 52:148] = False  # a 2-px outline of the box, in the downscaled frame
    expected[box] = BOX_RGB
    assert np.array_equal(rgb, expected)
    assert np.array_equal(decode_png(enc.encode(bgr, None)), bgr[::2, ::2, ::-1])


def test_publish_allocates_nothing_per_hop():
    peak, held = allocated_by("from types import SimpleNamespace\nfrom edge.serve import Latest",
                              "latest, img = Latest(), np.full((360, 480, 3), 7, np.uint8)\n"
                              "result = SimpleNamespace(face={'box': [1, 2, 30, 40]})",
                              "latest.publish(result, img)")
    assert peak < 2048 and held < 512, "a hop copied the frame through new memory"


def _served_url(proc: subprocess.Popen) -> str:
    for line in proc.stderr:
        if "live view at " in line:
            return line.split("live view at ", 1)[1].strip()
    raise AssertionError(f"no URL printed; stdout: {proc.stdout.read()}")


def _read_events(url: str) -> list[tuple[str, str]]:
    """(event, data) pairs of an SSE stream, until `end` (or the server closes it)."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
    conn.request("GET", f"{u.path}?{u.query}")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
    events, kind, data = [], "message", []
    for raw in resp.fp:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif not line and data:
            events.append((kind, "\n".join(data)))
            if kind == "end":
                break
            kind, data = "message", []
    conn.close()
    return events


PAGE_STATE = """JSON.stringify({fused: document.getElementById("fused").textContent,
    box: document.getElementById("fused").getBoundingClientRect(),
    color: getComputedStyle(document.getElementById("fused")).color,
    points: +document.getElementById("timeline").dataset.points, rss: document.getElementById("rss").textContent,
    hop: document.getElementById("lat").textContent, voiced: document.getElementById("voiced").textContent})"""


@pytest.mark.slow
def test_page_renders_in_headless_chromium_during_a_realtime_replay(bundles, tmp_path):
    browser = find_chromium()
    if browser is None:
        pytest.skip("chromium is not installed (tools/setup.sh installs it)")
    cv2 = pytest.importorskip("cv2")
    proc = subprocess.Popen([*CLI, "run", "--video", str(DEMO_VIDEO), "--realtime", "--serve", "127.0.0.1:0",
                             "--audio-model", bundles["audio"], "--face-model", bundles["face"]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = _served_url(proc)
        events: list = []
        reader = threading.Thread(target=lambda: events.extend(_read_events(url + "events")))
        reader.start()
        with Page(browser, str(tmp_path / "profile"), url) as page:
            assert page.wait_for("+document.getElementById('timeline').dataset.points >= 4", timeout=15)
            state = json.loads(page.evaluate(PAGE_STATE))
            shot = page.screenshot()
        port = urlsplit(url).port
        assert get(port, "/../../etc/passwd")[0] == 404
        assert get(port, "/edge/assets/demo.mp4")[0] == 404
        assert get(port, "/", host="attacker.example:80")[0] == 403  # DNS rebinding
        assert get(port, "/", method="POST")[0] >= 400
        frame = get(port, "/frame")
        assert frame[0] == 200 and decode_png(frame[1]).shape == (360, 480, 3)
        stdout, _ = proc.communicate(timeout=60)
        reader.join(10)
    finally:
        proc.kill()
    lines = {r["t"]: r for r in map(json.loads, stdout.splitlines())}
    results = [json.loads(d) for kind, d in events if kind == "message"]
    assert len(results) >= len(lines) - 4 and [kind for kind, _ in events][-1] == "end"
    assert all(r == lines[r["t"]] for r in results), "an event differs from the JSON line of its hop"
    assert all(json.loads(d)["rss_mb"] > 10 for kind, d in events if kind == "rss")
    assert state["fused"] in {r["fused"]["label"] for r in lines.values() if r["fused"]}, state
    assert re.fullmatch(r"\d+\.\d", state["rss"]) and re.fullmatch(r"\d+\.\d", state["hop"]), state
    assert state["voiced"] in ("voiced", "not voiced"), state
    image = cv2.imdecode(np.frombuffer(shot, np.uint8), cv2.IMREAD_COLOR)
    box, text_bgr = state["box"], [int(v) for v in re.findall(r"\d+", state["color"])][2::-1]
    label = image[int(box["top"]):int(box["bottom"]), int(box["left"]):int(box["right"])]
    assert (label == text_bgr).all(axis=2).sum() > 100, "the fused label is not drawn on the screenshot"
    ys, xs = np.nonzero((image == CANVAS_BG).all(axis=2))
    assert xs.max() - xs.min() > 500, "the timeline canvas is not on the screenshot"
    canvas = image[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(int)
    assert ((canvas.max(axis=2) - canvas.min(axis=2)) > 60).sum() > 100, "the timeline canvas is empty"


def test_other_interfaces_need_the_token(bundles):
    with edge.open(audio=str(DEMO_WAV), audio_model=bundles["audio"], serve="0.0.0.0:0", duration=1.0) as stream:
        token = stream.server.token
        assert len(token) >= 16 and stream.server.url.endswith(f":{stream.server.port}/?token={token}")
        port = stream.server.port
        assert get(port, "/")[0] == 403
        assert get(port, "/events?token=wrong")[0] == 403
        assert get(port, "/../etc/passwd")[0] == 403
        assert get(port, f"/../etc/passwd?token={token}")[0] == 404
        status, page = get(port, f"/?token={token}")
        assert status == 200 and b"<canvas" in page
        assert get(port, f"/frame?token={token}")[0] == 204  # audio only: no frame
        results = list(stream)
    assert len(results) == 2


def _stalled(port: int, path: str) -> socket.socket:
    """A client that sends its request and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


@pytest.mark.slow
def test_clients_that_never_read_do_not_slow_the_loop_and_are_dropped(bundles):
    hop, seen, checks, stalled = 0.25, threading.Event(), {}, []
    stream = edge.open(video=str(DEMO_VIDEO), audio_model=bundles["audio"], face_model=bundles["face"],
                       serve="127.0.0.1:0", realtime=True, duration=3.0, hop=hop)
    stream.server.send_timeout_s = 0.5

    def check() -> None:
        seen.wait(10)
        stalled.extend(_stalled(port, "/frame") for _ in range(max_clients))  # PNGs they never read
        time.sleep(0.1)
        checks["full"] = get(port, "/frame")[0]  # every connection is taken
        time.sleep(1.0)  # > send_timeout_s: the frame readers are dropped
        checks["frame"] = get(port, "/frame")[0]
        checks["events"] = get(port, "/events")[0]  # the silent event streams still hold their slots

    with stream:
        port, max_clients = stream.server.port, stream.server.max_clients
        stalled += [_stalled(port, "/events") for _ in range(max_clients)]
        checker = threading.Thread(target=check)
        checker.start()
        begin, times = time.monotonic(), []
        for _ in stream:
            times.append(time.monotonic() - begin)
            seen.set()
        checker.join(10)
    for sock in stalled:
        sock.close()
    # Lateness after the first hop (which pays the interpreters' first runs): a send that waited
    # on a stalled client would hold a hop for send_timeout_s (0.5 s) or more.
    late = [t - times[0] - k * hop for k, t in enumerate(times)]
    assert len(times) == 12 and max(late) < 0.3, f"the loop was held up: {late}"
    assert checks == {"full": 503, "frame": 200, "events": 503}


def test_a_taken_port_is_one_line_and_exit_2(bundles):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        p = subprocess.run([*CLI, "run", "--audio", str(DEMO_WAV), "--audio-model", bundles["audio"],
                            "--serve", str(taken.getsockname()[1])], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().startswith("avemo-edge: error: --serve 127.0.0.1:") and "pick another port" in p.stderr
