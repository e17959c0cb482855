"""Debian's headless Chromium driven over the DevTools protocol, for the flame graph tests.

with Chromium(tmp_path) as browser:
    browser.open("file:///tmp/flame.html")
    assert browser.errors == []
    browser.screenshot(tmp_path / "flame.png")
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import websocket

from tests.agent import wait_for

VIEWPORT = (1280, 900)


class Chromium:
    """One headless browser with one page; every console error, uncaught exception
    and request the page makes is recorded."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.errors: list[str] = []  # console errors and uncaught exceptions
        self.requests: list[str] = []  # every URL the page asked for
        self.prompt_answer = ""  # typed into the next window.prompt()
        self._process: subprocess.Popen | None = None
        self._socket: websocket.WebSocket | None = None
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    def __enter__(self) -> Chromium:
        profile = self.folder / "chromium-profile"
        port_file = profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)  # a browser's of this folder before
        self._process = subprocess.Popen(
            [
                shutil.which("chromium") or "chromium",
                "--headless",
                "--no-sandbox",  # root, in the test's own profile directory
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.folder / "chromium.log").open("w"),
            start_new_session=True,  # its own process group, ended as one on exit
        )
        wait_for(port_file.exists, 30, "chromium's DevTools port", interval=0.1)
        wait_for(lambda: len(port_file.read_text().split()) >= 2, 5, "the port file")
        port = int(port_file.read_text().split()[0])
        pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
        page = next(p for p in pages if p["type"] == "page")
        self._socket = websocket.create_connection(
            page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True
        )
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        width, height = VIEWPORT
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._socket is not None:
            self._socket.close()
        if self._process is not None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result, recording the events meanwhile."""
        assert self._socket is not None
        self._next_id += 1
        sent = self._next_id
        self._socket.send(json.dumps({"id": sent, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv())
            if message.get("id") == sent:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            if "method" in message:
                self._record(message)

    def open(self, url: str, timeout: float = 30) -> None:
        """Navigate and wait for the load event."""
        self._events.clear()
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not any(e["method"] == "Page.loadEventFired" for e in self._events):
            assert time.monotonic() < deadline, f"{url} did not load within {timeout} s"
            self.evaluate("1")  # reads the events that arrived meanwhile

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def hover(self, x: float, y: float) -> None:
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)

    def screenshot(self, path: Path) -> Path:
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def _record(self, event: dict[str, Any]) -> None:
        self._events.append(event)
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            texts = [str(arg.get("value", arg.get("description"))) for arg in params["args"]]
            self.errors.append("console: " + " ".join(texts))
        elif method == "Runtime.exceptionThrown":
            self.errors.append("exception: " + json.dumps(params["exceptionDetails"])[:500])
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append("log: " + params["entry"]["text"])
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Page.javascriptDialogOpening":
            assert self._socket is not None
            self._next_id += 1
            answer = {"accept": True, "promptText": self.prompt_answer}
            self._socket.send(
                json.dumps(
                    {"id": self._next_id, "method": "Page.handleJavaScriptDialog", "params": answer}
                )
            )


# Every frame drawn (hidden ones left out) with its box on the page and its state.
_FRAMES = """
Array.from(document.querySelectorAll("g.f"))
  .filter((g) => !g.classList.contains("hidden"))
  .map((g) => {
    const box = g.querySelector("rect").getBoundingClientRect();
    const title = g.querySelector("title").textContent.split("\\n");
    return {label: title[0], details: title[1], kind: g.dataset.k, depth: +g.dataset.d,
            x: box.x, y: box.y, width: box.width, height: box.height,
            text: g.querySelector("text").textContent,
            match: g.classList.contains("match"), parent: g.classList.contains("parent"),
            fill: getComputedStyle(g.querySelector("rect")).fill};
  })
"""


def frames(browser: Chromium) -> list[dict[str, Any]]:
    """The flame graph's frames as drawn now."""
    return browser.evaluate(_FRAMES)


def click_element(browser: Chromium, selector: str, index: int = 0) -> None:
    """Scroll the ``index``th element matching ``selector`` into view and click its middle."""
    box = browser.evaluate(
        f"(() => {{ const e = document.querySelectorAll({json.dumps(selector)})[{index}];"
        " e.scrollIntoView({block: 'center'}); const b = e.getBoundingClientRect();"
        " return [b.x + b.width / 2, b.y + b.height / 2]; })()"
    )
    browser.click(*box)
