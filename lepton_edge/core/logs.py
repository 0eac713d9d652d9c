"""Structured logs that read well in a terminal and in journald: ``level logger: message key=value``."""

from __future__ import annotations

import logging
import os
import sys

_SYSLOG_PRIORITY = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}


class _Formatter(logging.Formatter):
    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        name = record.name.removeprefix("lepton_edge.")
        if self.journald:
            # journald adds its own timestamp; the <N> prefix sets the entry's priority.
            line = f"<{_SYSLOG_PRIORITY.get(record.levelname, 6)}>{name}: {msg}"
        else:
            line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname.lower():<7} {name}: {msg}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "info") -> None:
    """Configure the root logger once, for journald when run by systemd, else for a terminal."""
    journald = bool(os.environ.get("JOURNAL_STREAM")) and not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(journald))
    handler.set_name("lepton-edge")
    root = logging.getLogger()
    # Replace our own handler on a second call; leave others (pytest's capture, an embedding app) alone.
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "lepton-edge"] + [handler]
    root.setLevel(level.upper())
