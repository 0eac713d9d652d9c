"""Leader election: one replica plans placement, through the store's advisory lock (``store.try_lead``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from lepton_edge.scheduler.control import StoreHealth
from lepton_edge.scheduler.store import Store, StoreError

log = logging.getLogger("lepton_edge.scheduler.leadership")


class Leadership:
    """Takes and renews the leadership (:meth:`check`, periodically); ``on_elected`` runs when it is won."""

    def __init__(self, store: Store, replica_id: str, health: StoreHealth, on_elected: Callable[[], None]) -> None:
        self._store = store
        self._replica_id = replica_id
        self._health = health
        self._on_elected = on_elected
        self.is_leader = False
        self.since: float | None = None

    def check(self) -> None:
        try:
            leading = self._store.try_lead(self._replica_id)
        except StoreError as e:
            self._health.failed(e)
            leading = False
        else:
            self._health.recovered()
        if leading and not self.is_leader:
            self.is_leader = True
            self.since = time.time()
            log.info("replica %s is now the placement leader", self._replica_id)
            self._health.guard(
                lambda: self._store.add_event(
                    "scheduler.leader",
                    f"replica {self._replica_id} leads placement",
                    details={"replica": self._replica_id},
                )
            )
            self._on_elected()
        elif not leading and self.is_leader:
            self.is_leader = False
            self.since = None
            log.warning("replica %s lost the placement leadership; standing by", self._replica_id)

    def release(self) -> None:
        """Give the leadership up (on stop), so another replica takes it at once."""
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            self._store.release_lead(self._replica_id)
        except StoreError as e:
            log.warning("could not release the leadership: %s", e)
