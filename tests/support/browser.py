"""Headless Debian Chromium driven through the DevTools protocol, with the `websockets` package Airflow already pins.

Just enough of a browser driver for the UI test: open a page, run JavaScript in it, wait for a condition, take a
screenshot. Chromium picks its own debugging port and writes it to ``DevToolsActivePort`` in its profile directory.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

import requests
from websockets.sync.client import connect

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1600,1000",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
)


#: Types into React-controlled inputs the way a keyboard would (the value setter, then an input event).
FILL_LOGIN_FORM = """(() => {
    const set = (input, value) => {
        Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(input, value);
        input.dispatchEvent(new Event('input', {bubbles: true}));
    };
    const inputs = [...document.querySelectorAll('input')];
    set(inputs.find(i => i.name === 'username') || inputs[0], USERNAME);
    set(document.querySelector('input[type=password]'), PASSWORD);
    return true;
})()"""


class BrowserError(Exception):
    pass


class Chromium:
    def __init__(self, *, start_timeout: float = 60.0) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
        self.process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port = self._debugging_port(start_timeout)
        pages = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(target for target in pages if target["type"] == "page")
        self.socket = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self._ids = itertools.count(1)
        self.call("Page.enable")
        self.call("Runtime.enable")

    def _debugging_port(self, timeout: float) -> int:
        marker, deadline = self.profile / "DevToolsActivePort", time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrowserError(f"{CHROMIUM} exited with code {self.process.returncode}")
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().splitlines()[0])
            time.sleep(0.2)
        raise BrowserError(f"{CHROMIUM} did not open its debugging port within {timeout:.0f} s")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.socket.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
            shutil.rmtree(self.profile, ignore_errors=True)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events arriving meanwhile are dropped)."""
        message_id = next(self._ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == message_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}...: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, *, timeout: float = 60.0, what: str = "") -> Any:
        """Poll ``expression`` until it is truthy; its value is returned."""
        deadline, value = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except BrowserError:
                value = None  # the page is navigating
            if value:
                return value
            time.sleep(0.5)
        location = self.evaluate("location.href")
        raise BrowserError(f"timed out after {timeout:.0f} s waiting for {what or expression} (at {location})")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", what=f"{url} to load")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def log_in_to_airflow(self, base_url: str, username: str, password: str) -> None:
        """Through the simple auth manager's real login form, as a person would."""
        self.open(f"{base_url}/")
        self.wait_for("!!document.querySelector('input[type=password]')", what="the login form")
        fill = FILL_LOGIN_FORM.replace("USERNAME", json.dumps(username)).replace("PASSWORD", json.dumps(password))
        self.evaluate(fill)
        self.wait_for("!document.querySelector('button[type=submit]').disabled", what="the login button")
        self.evaluate("document.querySelector('button[type=submit]').click(), true")
        self.wait_for("document.cookie.includes('_token=') && !location.pathname.startsWith('/auth')", what="login")


def chromium_available() -> bool:
    return shutil.which(CHROMIUM) is not None or Path(CHROMIUM).exists()
