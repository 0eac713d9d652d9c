"""What one replica remembers about each device in memory (the store holds the shared truth)."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

from lepton_edge.config.scheduler import IngestConfig
from lepton_edge.core.metrics import TokenBucket
from lepton_edge.fleet.protocol import SequenceTracker
from lepton_edge.scheduler.store import Store

UNKNOWN_DEVICES_MAX = 10_000
"""Devices never seen born that this replica remembers (for rate limits); the oldest are forgotten."""


@dataclass(eq=False)
class DeviceView:
    """What this replica knows about one device."""

    device_id: str
    bucket: TokenBucket
    session: int | None = None
    death_session: int = 0
    """The newest session whose death was seen: a birth of it (or older) does not bring the device back."""
    online: bool = False
    last_seen: float = 0.0
    tracker: SequenceTracker = field(default_factory=SequenceTracker)
    throttled: bool = False
    low_reports: int = 0
    under_rate: bool = False
    rebirth_at: float = 0.0
    """When a rebirth was last requested (rate limit)."""
    resolve_at: float = 0.0
    """When the store was last asked about an unknown session (rate limit)."""
    sampled_at: float = 0.0
    """When a message rejected by the rate limit was last decoded to see whether it proves liveness."""
    death_sampled_at: float = 0.0
    """When a death the rate limit rejected was last decoded (a death of the current session still gets in)."""
    stored_seen_at: float = 0.0
    """When liveness was last written to the store without telemetry (``Store.device_seen``)."""
    last_report: tuple[int, str] | None = None
    capacity: dict[str, float] = field(default_factory=dict)
    """Leader: fps per model learned from this device's telemetry (the store's rule), for models of
    unplaced workloads only."""
    capacity_replanned: dict[str, float] = field(default_factory=dict)
    """Leader: the capacity per model at the last re-plan it triggered."""


class DeviceViews:
    """The views of born devices, and a bounded set of views of devices never born (rate limits only)."""

    def __init__(self, ingest: IngestConfig) -> None:
        self._ingest = ingest
        self._known: dict[str, DeviceView] = {}
        self._unknown: collections.OrderedDict[str, DeviceView] = collections.OrderedDict()

    def _new(self, device_id: str, now: float) -> DeviceView:
        return DeviceView(device_id, TokenBucket(self._ingest.device_rate_hz, self._ingest.device_burst, now))

    def get(self, device_id: str) -> DeviceView | None:
        """The view of a born device, or None."""
        return self._known.get(device_id)

    def known(self, device_id: str, now: float) -> DeviceView:
        """The view of a born device, created (or promoted from the unknown ones) if needed."""
        view = self._known.get(device_id)
        if view is None:
            view = self._unknown.pop(device_id, None) or self._new(device_id, now)
            self._known[device_id] = view
        return view

    def known_or_unknown(self, device_id: str, now: float) -> DeviceView:
        """The device's view; devices never born get a bounded, separately kept one."""
        view = self._known.get(device_id) or self._unknown.get(device_id)
        if view is None:
            view = self._unknown[device_id] = self._new(device_id, now)
            while len(self._unknown) > UNKNOWN_DEVICES_MAX:
                self._unknown.popitem(last=False)
        return view

    def all(self) -> list[DeviceView]:
        """A snapshot of the born devices' views (safe to iterate while messages arrive)."""
        return list(self._known.values())

    def __len__(self) -> int:
        return len(self._known)

    def online_count(self) -> int:
        return sum(1 for v in self.all() if v.online)

    def seed(self, store: Store) -> None:
        """Start from the store's view of the fleet; silent devices get a full timeout from now.

        Raises StoreError when the store does not answer."""
        now = time.time()
        for device in store.list_devices():
            view = self.known(device.device_id, now)
            view.session = device.session_id or None
            view.online = device.online
            if not device.online and device.offline_reason in ("connection_lost", "shutdown"):
                view.death_session = device.session_id
            view.throttled = device.throttled
            view.last_seen = now
            if device.session_id:
                view.tracker.birth(device.session_id)
