"""Headless Chromium driven over the DevTools protocol on a pipe, for the `--serve` page tests.

`--screenshot`/`--dump-dom` wait for the page to go idle, which a page holding an event
stream never does (Chromium's virtual time stalls on it), so the test drives the browser
itself: open the page, poll its DOM, take a screenshot, all while the stream runs.
Messages are JSON, NUL-terminated, on fds 3 (to the browser) and 4 (from it).
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

EXEC_ON_3_AND_4 = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
                   "os.execvp(sys.argv[3], sys.argv[3:])")


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One headless browser showing `url` in a `width` x `height` viewport; use with `with`."""

    def __init__(self, browser: str, profile_dir: str, url: str, width: int = 1000, height: int = 720) -> None:
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()
        child = [fcntl.fcntl(fd, fcntl.F_DUPFD, 5) for fd in (to_child, from_child)]  # not 3 or 4
        for fd in (to_child, from_child):
            os.close(fd)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", EXEC_ON_3_AND_4, str(child[0]), str(child[1]), browser, *FLAGS,
             "--remote-debugging-pipe", f"--user-data-dir={profile_dir}", f"--window-size={width},{height}", url],
            pass_fds=child, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in child:
            os.close(fd)
        self._buf, self._id, self._session = b"", 0, None
        page = next(t for t in self._call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self._session = self._call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self._call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def __enter__(self) -> "Page":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._call("Browser.close")
            self.proc.wait(10)
        except (OSError, RuntimeError, subprocess.TimeoutExpired):
            self.proc.kill()
        finally:
            os.close(self._in), os.close(self._out)

    def _call(self, method: str, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if self._session is not None and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self._session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium closed the DevTools pipe during {method}")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str):
        """The JSON value of a JavaScript expression in the page."""
        return self._call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float) -> bool:
        """Poll until the expression is truthy (True) or `timeout` seconds pass (False)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.evaluate(expression):
                return True
            time.sleep(0.1)
        return False

    def screenshot(self) -> bytes:
        return base64.b64decode(self._call("Page.captureScreenshot", format="png")["data"])
