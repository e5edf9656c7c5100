"""`timar view --web` looked at as a person would: the web viewer in headless Chromium, a screenshot, and the
three heads drawn in it (their colours: the agent blue, the ground truth green, the user orange) beside the
agent's curves.

Chromium (Debian package `chromium`) renders WebGL with its software rasteriser (SwiftShader) and is driven
through the DevTools protocol over a pipe (--remote-debugging-pipe: JSON messages ended by NUL on file
descriptors 3 and 4). The viewer compiles its WebAssembly first, which takes tens of seconds on 2 cores, so
the test takes screenshots until the heads show or a time limit passes. The last screenshot is kept as
`web_view.png` in the test's temporary folder.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LOAD_LIMIT = 180.0  # s for the viewer to show the heads

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian package `chromium`)"),
]


class DevTools:
    """Chromium's DevTools protocol over --remote-debugging-pipe."""

    def __init__(self, profile: Path, width: int = 1600, height: int = 1000) -> None:
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def fds() -> None:  # the child reads commands on fd 3 and writes replies on fd 4
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader",
             "--enable-unsafe-swiftshader", f"--window-size={width},{height}", "--remote-debugging-pipe",
             "--no-first-run", f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf, self._id = b"", 0

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60.0):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            if select.select([self._r], [], [], 1.0)[0]:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buf += chunk
        raise TimeoutError(method)

    def open(self, url: str) -> str:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", session=session)
        self.call("Page.navigate", {"url": url}, session=session)
        return session

    def screenshot(self, session: str) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._w)
        os.close(self._r)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drawn_pixels(png: bytes) -> dict[str, int]:
    """Pixels of each head's hue in the screenshot's heads view (its left 60 %), and of the agent's curves
    (deep blue) in the plots (its right 40 %)."""
    import io

    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    split = img.shape[1] * 6 // 10
    heads = img[: img.shape[0] * 3 // 4, :split]
    r, g, b = heads[..., 0], heads[..., 1], heads[..., 2]
    plots = img[:, split:]
    pr, pg, pb = plots[..., 0], plots[..., 1], plots[..., 2]
    return {
        "agent": int(((b > r + 25) & (b > g + 5) & (b > 120)).sum()),
        "ground_truth": int(((g > r + 20) & (g > b + 20) & (g > 110)).sum()),
        "user": int(((r > b + 45) & (r > g + 10) & (r > 150)).sum()),
        "agent_curves": int(((pb > pr + 90) & (pb > pg + 60)).sum()),
    }


def test_web_viewer_shows_the_heads(tmp_path):
    from test_view_recording import CLIP, make_split

    split, pred = make_split(tmp_path / "data")
    web, grpc = _free_port(), _free_port()
    view = subprocess.Popen([sys.executable, "-m", "timar_model.cli", "view", "--pred", str(pred), "--gt", str(split),
                             "--clip", CLIP, "--web", "--web-port", str(web), "--grpc-port", str(grpc)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    chrome = None
    try:
        line = ""
        end = time.monotonic() + 120
        while "web viewer:" not in line and time.monotonic() < end and view.poll() is None:
            line = view.stdout.readline()
        assert "web viewer:" in line, line + (view.stdout.read() if view.poll() is not None else "")
        url = line.split("web viewer:")[1].split()[0]
        chrome = DevTools(tmp_path / "profile")
        session = chrome.open(url)
        end = time.monotonic() + LOAD_LIMIT
        counts: dict[str, int] = {}
        while time.monotonic() < end:
            time.sleep(5.0)
            png = chrome.screenshot(session)
            (tmp_path / "web_view.png").write_bytes(png)
            counts = drawn_pixels(png)
            if min(counts.values()) > 1500:
                break
        assert min(counts.values()) > 1500, f"heads or curves not drawn after {LOAD_LIMIT:.0f} s: {counts}; " \
                                            f"see {tmp_path / 'web_view.png'}"
    finally:
        if chrome is not None:
            chrome.close()
        view.send_signal(2)
        try:
            view.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            view.kill()
