"""The chat page at / in a real headless browser (Debian's chromium, driven over the Chrome DevTools
protocol with `websockets`): type "What is the capital of France?", press Send, wait for the
streamed answer, screenshot it to bench/out/, and check the text on the page.

With the tiny synthetic model the page's answer must equal the API's own answer at temperature 0
(the page streams it); with the real SmolLM2 W4A4 file (the session's default conversion,
conftest.smollm2_sq4; a slow test) the answer must name Paris.
Skips when chromium is not installed (apt-get install chromium; .ci/run installs it).
"""
from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("starlette")
openai = pytest.importorskip("openai")
ws_sync = pytest.importorskip("websockets.sync.client")

from test_server import Server  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
QUESTION = "What is the capital of France?"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


class Browser:
    """Headless chromium and one page, over CDP."""

    def __init__(self, url: str) -> None:
        exe = _chromium()
        self.profile = tempfile.mkdtemp(prefix="sq-chromium-")
        self.proc = subprocess.Popen([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                      "--disable-dev-shm-usage", "--remote-debugging-port=0",
                                      f"--user-data-dir={self.profile}", "--window-size=1000,700", url],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if m:
                port = int(m.group(1))
            elif not line and self.proc.poll() is not None:
                break
        if port is None:
            self.close()
            raise RuntimeError("chromium did not start its DevTools endpoint")
        page = None
        while page is None and time.monotonic() < deadline:
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
            page = next((t for t in targets if t.get("type") == "page" and t["url"].startswith(url)), None)
            time.sleep(0.05)
        assert page is not None, "no page target"
        # __enter__: what every websockets version accepts (newer ones warn on a bare connect())
        self.ws = ws_sync.connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=20).__enter__()
        self.ids = itertools.count(1)

    def call(self, method: str, **params):
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expr: str):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expr: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.js(expr):
            assert time.monotonic() < deadline, f"timed out waiting for {expr}"
            time.sleep(0.05)

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def _ask_in_page(server: Server, shot: Path, max_tokens: int) -> str:
    b = Browser(server.url + "/")
    try:
        b.wait("document.readyState === 'complete' && !!document.getElementById('model') && "
               "document.getElementById('model').textContent !== '…'")
        b.js("document.getElementById('temperature').value = '0'")
        b.js(f"document.getElementById('max_tokens').value = '{max_tokens}'")
        b.js(f"document.getElementById('input').value = {json.dumps(QUESTION)}")
        b.js("document.getElementById('send').click()")
        b.wait("document.getElementById('stop').disabled === false || "
               "(document.querySelector('.assistant') && document.querySelector('.assistant').dataset.done === '1')")
        b.wait("document.querySelector('.msg.assistant') && document.querySelector('.msg.assistant').dataset.done === '1'",
               timeout=120)
        b.screenshot(shot)
        assert b.js("document.querySelector('.msg.user').textContent") == QUESTION
        return b.js("document.querySelector('.msg.assistant').textContent")
    finally:
        b.close()


needs_chromium = pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install chromium)")


@needs_chromium
def test_chat_page_streams_answer_tiny(tiny_sq4) -> None:
    s = Server(tiny_sq4.path, "--ctx", "256", "--threads", "1")
    try:
        page = _ask_in_page(s, OUT / "chat_page_tiny.png", 24)
        want = s.client().chat.completions.create(model="m", messages=[{"role": "user", "content": QUESTION}],
                                                  max_tokens=24, temperature=0).choices[0].message.content
        assert page == want and page
    finally:
        s.close()


@needs_chromium
@pytest.mark.slow
def test_chat_page_paris_smollm2(smollm2_sq4: Path) -> None:
    s = Server(smollm2_sq4, "--ctx", "512", "--threads", "2")
    try:
        page = _ask_in_page(s, OUT / "chat_page.png", 48)
        assert "Paris" in page, page
    finally:
        s.close()
