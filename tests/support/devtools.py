"""Drive a real headless Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages ending in a NUL byte, commands on fd 3, answers on fd 4), so a test can fill forms, click and read
the page as it is now: no WebSocket library, no WebDriver."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any


class DevtoolsError(AssertionError):
    """The browser answered a command with an error, or did not answer in time."""


class Browser:
    """One headless Chromium with one page: :meth:`goto`, :meth:`eval`, :meth:`wait`; a context manager."""

    def __init__(self, chromium: str, flags: list[str], profile: Path, timeout: float = 30.0) -> None:
        self.timeout = timeout
        cmd_read, self._cmd = os.pipe()
        self._out, out_write = os.pipe()
        args = " ".join(
            shlex.quote(a)
            for a in [chromium, *flags, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        )
        self._proc = subprocess.Popen(
            ["bash", "-c", f"exec {args} 3<&{cmd_read} 4>&{out_write}"],
            pass_fds=(cmd_read, out_write),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(cmd_read)
        os.close(out_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        """Every event the browser sent (``method`` and ``params``), e.g. after ``Network.enable``."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable", session=True)

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: bool = False) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session
        os.write(self._cmd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._read(deadline)
            if "method" in answer and "id" not in answer:
                self.events.append(answer)
            elif answer.get("id") == self._next_id:
                if "error" in answer:
                    raise DevtoolsError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise DevtoolsError("Chromium did not answer in time")
            chunk = os.read(self._out, 1 << 16)
            if not chunk:
                raise DevtoolsError(f"Chromium closed its DevTools pipe (exit {self._proc.poll()})")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def on_new_document(self, script: str) -> None:
        """Run ``script`` in every page before its own scripts (not subject to the page's CSP)."""
        self.send("Page.addScriptToEvaluateOnNewDocument", {"source": script}, session=True)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url}, session=True)

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session=True
        )
        if "exceptionDetails" in result:
            raise DevtoolsError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, what: str, timeout: float | None = None) -> Any:
        """Poll ``expression`` until it is truthy; fail naming ``what``."""
        deadline = time.monotonic() + (timeout or self.timeout)
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.eval(expression)
            except DevtoolsError as e:  # the page is between documents
                value = e
            else:
                if value:
                    return value
            time.sleep(0.1)
        raise DevtoolsError(f"timed out waiting for {what} (last value {value!r})")

    def close(self) -> None:
        with contextlib.suppress(DevtoolsError, OSError):
            self.send("Browser.close")
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        os.close(self._cmd)
        os.close(self._out)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
