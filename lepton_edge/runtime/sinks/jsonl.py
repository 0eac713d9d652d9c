"""JSON Lines: one result per line, flushed in small batches."""

from __future__ import annotations

import json
from typing import IO

from lepton_edge.config.pipeline import JsonlSinkConfig
from lepton_edge.core.results import Result
from lepton_edge.runtime.sinks.base import Sink


class JsonlSink(Sink):
    name = "jsonl"

    def __init__(self, config: JsonlSinkConfig) -> None:
        super().__init__(config.queue_size)
        self.path = config.path
        self.flush_every = config.flush_every
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in release()
        self._unflushed = 0

    def write(self, result: Result) -> None:
        self._file.write(json.dumps(result.to_dict(), separators=(",", ":")) + "\n")
        self._unflushed += 1
        if self._unflushed >= self.flush_every:
            self._file.flush()
            self._unflushed = 0

    def release(self) -> None:
        self._file.close()
