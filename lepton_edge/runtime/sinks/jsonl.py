"""JSON Lines: one result per line, flushed in small batches, rotated at a size limit."""

from __future__ import annotations

import json
import logging
from typing import IO

from lepton_edge.config.pipeline import JsonlSinkConfig
from lepton_edge.core.results import Result
from lepton_edge.runtime.sinks.base import Sink, rotate

log = logging.getLogger(__name__)


class JsonlSink(Sink):
    name = "jsonl"

    def __init__(self, config: JsonlSinkConfig) -> None:
        super().__init__(config.queue_size)
        self.path = config.path
        self.flush_every = config.flush_every
        self.max_bytes = config.max_bytes
        self.rotations = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = open(self.path, "ab")  # noqa: SIM115 - closed in release()
        self._size = self._file.tell()
        self._unflushed = 0

    def write(self, result: Result) -> None:
        line = json.dumps(result.to_dict(), separators=(",", ":")).encode() + b"\n"
        if self._size and self._size + len(line) > self.max_bytes:
            self._rotate()
        self._file.write(line)
        self._size += len(line)
        self._unflushed += 1
        if self._unflushed >= self.flush_every:
            self._file.flush()
            self._unflushed = 0

    def _rotate(self) -> None:
        self._file.close()
        rotated = rotate(self.path)
        self.rotations += 1
        log.info("jsonl sink: %s reached %d bytes, rotated to %s", self.path, self._size, rotated.name)
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed in release()
        self._size = self._unflushed = 0

    def stats(self) -> dict[str, object]:
        return {**super().stats(), "rotations": self.rotations}

    def release(self) -> None:
        self._file.close()
