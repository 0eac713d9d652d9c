"""Sinks receive results from the postprocess stage and must never block it.

Each sink owns a bounded buffer and a worker thread; when the buffer is full the oldest buffered
result is dropped and counted (the sink is slow or stuck), so the pipeline keeps its pace.
"""

from __future__ import annotations

import abc
import logging
import threading
from pathlib import Path
from typing import Any

from lepton_edge.core.results import Result
from lepton_edge.runtime.channel import CLOSED, Channel, ChannelClosed

log = logging.getLogger(__name__)


def rotate(path: Path) -> Path:
    """Move ``path`` to its rotated name (``results.jsonl`` -> ``results.1.jsonl``), replacing an older one."""
    rotated = path.with_name(f"{path.stem}.1{path.suffix}")
    path.replace(rotated)
    return rotated


class Sink(abc.ABC):
    name: str = "sink"
    needs_image: bool = False
    """True when the sink needs the source pixels (the pipeline then keeps them in the result)."""
    latest_only: bool = False
    """True when only the newest result matters (a live display): replacing an unsent one is not a drop."""

    def __init__(self, queue_size: int = 256) -> None:
        self.dropped = 0
        self.written = 0
        self.errors = 0
        self.last_error: str | None = None
        self._queue: Channel[Result] = Channel(queue_size, "latest")
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def offer(self, result: Result) -> bool:
        """Hand a result over without blocking. False when the buffer was full and a result was dropped."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=f"lepton-sink-{self.name}",
                                                    daemon=True)
                    self._thread.start()
        try:
            evicted = self._queue.put(result)
        except ChannelClosed:
            self.dropped += 1
            return False
        if evicted is not None and not self.latest_only:
            self.dropped += 1
            return False
        return True

    def _run(self) -> None:
        while (result := self._queue.get()) is not CLOSED:
            try:
                self.write(result)
                self.written += 1
            except Exception as e:  # a failing sink reports and keeps going; the pipeline is not its hostage
                self.errors += 1
                if self.last_error != str(e):
                    log.error("sink %s failed to write: %s", self.name, e)
                self.last_error = str(e)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is buffered, then release the sink's resources."""
        self._queue.close()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("sink %s did not finish within %.0f s; %d result(s) lost", self.name, timeout,
                            len(self._queue))
        self.release()

    def stats(self) -> dict[str, Any]:
        return {"written": self.written, "dropped": self.dropped, "errors": self.errors,
                "last_error": self.last_error}

    @abc.abstractmethod
    def write(self, result: Result) -> None:
        """Deliver one result (runs on the sink's own thread)."""

    def release(self) -> None:  # noqa: B027 - optional hook, most sinks hold nothing to release
        """Close files and connections (runs once, after the last write)."""
