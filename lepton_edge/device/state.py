"""The agent's small persistent state: the session counter and the last good remote config.

Every write is atomic: after a crash or power loss the file holds either the old or the new content, never
a mix. The config state is replaced with :func:`atomic_write`; the session counter is rewritten in place, one
record of :data:`SESSION_RECORD_BYTES` bytes at offset 0 (one sector: written whole or not at all), so it
needs no new block and a full state disk cannot stop the device from starting. A counter that cannot be
written is refused and counted (:attr:`StateStore.refused_writes`), and the session id then comes from the
clock, which stays above any persisted counter. Unreadable state is reported and replaced, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton_edge.core.errors import ConfigError
from lepton_edge.core.fileio import atomic_write

log = logging.getLogger(__name__)

SESSION_FILE = "session"
SESSION_RECORD_BYTES = 32
"""Size of the session counter's record: digits, a newline, space padding."""
CONFIG_FILE = "config.json"


@dataclass(frozen=True, slots=True)
class ConfigState:
    """What the remote configuration left behind: the versions handled and the config running."""

    handled_version: int = 0
    """Highest desired version applied, rejected or rolled back; lower or equal versions are ignored."""
    active_version: int = 0
    """Version of the running config (0: the local file)."""
    config: dict[str, Any] | None = None
    """The desired ``config`` mapping of ``active_version`` (None for the local file)."""

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "handled_version": self.handled_version,
                "active_version": self.active_version,
                "config": self.config,
                "saved_at": time.time(),
            },
            indent=1,
        ).encode("utf-8")


class StateStore:
    """The files of one agent in ``state_dir`` (created if missing)."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(
                f"agent.state_dir: cannot create {self.dir}: {e}; set agent.state_dir to a writable folder"
            ) from None
        if not os.access(self.dir, os.W_OK):
            raise ConfigError(f"agent.state_dir: {self.dir} is not writable; set agent.state_dir to a writable folder")
        self._lock = threading.Lock()
        self._last_handed_out = 0
        self.refused_writes = 0
        """State writes refused (a full disk, an I/O error): the device went on without them."""

    @property
    def session_path(self) -> Path:
        return self.dir / SESSION_FILE

    @property
    def config_path(self) -> Path:
        return self.dir / CONFIG_FILE

    def last_session(self) -> int:
        """The last session id handed out (0 if none)."""
        try:
            text = self.session_path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as e:
            log.error("session counter %s is unreadable (%s)", self.session_path, e)
            return -1
        if not text.isdigit():
            log.error("session counter %s is corrupt (%r)", self.session_path, text[:40])
            return -1
        return int(text)

    def next_session(self) -> int:
        """Increment and persist the session counter; return the new session id (>= 1).

        A corrupt counter restarts from the current time in milliseconds, which is larger than any counter
        incremented once per connection attempt, so ids keep increasing. So does a counter that cannot be
        written (a full disk): the id is then not persisted, and the write is counted in ``refused_writes``.
        """
        with self._lock:
            last = self.last_session()
            if last < 0:
                session = max(int(time.time() * 1000), self._last_handed_out + 1)
            else:
                session = max(last, self._last_handed_out) + 1
            try:
                self._write_session(session)
            except OSError as e:
                session = max(session, int(time.time() * 1000))
                self.refused_writes += 1
                log.error(
                    "cannot persist the session counter %s (%s); using session %d from the clock, not persisted",
                    self.session_path,
                    e.strerror or e,
                    session,
                )
            self._last_handed_out = session
            return session

    def _write_session(self, session: int) -> None:
        """Rewrite the counter's record in place (no new block needed once the file exists)."""
        record = f"{session}\n".ljust(SESSION_RECORD_BYTES).encode("ascii")
        fd = os.open(self.session_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, record, 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    def load_config_state(self) -> ConfigState:
        """The persisted remote-config state; an empty state if there is none or it is unreadable."""
        try:
            data = json.loads(self.config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return ConfigState()
        except (OSError, ValueError) as e:
            log.error("ignoring the unreadable remote config state %s: %s", self.config_path, e)
            return ConfigState()
        try:
            handled, active, config = data["handled_version"], data["active_version"], data["config"]
            if not (isinstance(handled, int) and isinstance(active, int) and 0 <= active <= handled):
                raise ValueError("versions must be integers with 0 <= active_version <= handled_version")
            if not (config is None or isinstance(config, dict)):
                raise ValueError("config must be a mapping or null")
            if (config is None) != (active == 0):
                raise ValueError("config must be set exactly when active_version > 0")
        except (KeyError, TypeError, ValueError) as e:
            log.error("ignoring the invalid remote config state %s: %s", self.config_path, e)
            return ConfigState()
        return ConfigState(handled, active, config)

    def save_config_state(self, state: ConfigState) -> None:
        """Persist ``state`` atomically."""
        with self._lock:
            atomic_write(self.config_path, state.to_json())
