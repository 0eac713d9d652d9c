"""A bounded hand-off between two threads, in one of two policies.

- ``block``: ``put`` waits for room (offline sources: lossless back-pressure).
- ``latest``: ``put`` never waits; when full, the oldest item is evicted and returned so the caller
  can count the drop (live sources: latest frame wins).

``close()`` lets the consumer drain what is left and then see :data:`CLOSED`; ``abort()`` wakes
everyone at once and discards the contents (a stage failed).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")


class _Closed:
    def __repr__(self) -> str:
        return "CLOSED"


CLOSED: Any = _Closed()
"""Returned by ``get`` once the channel is closed and empty, or aborted."""


class Channel(Generic[T]):
    def __init__(self, capacity: int, policy: Literal["block", "latest"] = "block") -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.policy = policy
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._aborted = False

    def put(self, item: T) -> T | None:
        """Add ``item``. Returns the evicted item under the ``latest`` policy, else None.

        Raises :class:`ChannelClosed` if the channel was closed or aborted (the consumer is gone).
        """
        with self._cond:
            if self.policy == "block":
                while len(self._items) >= self.capacity and not (self._closed or self._aborted):
                    self._cond.wait()
            if self._closed or self._aborted:
                raise ChannelClosed
            evicted = self._items.popleft() if len(self._items) >= self.capacity else None
            self._items.append(item)
            self._cond.notify_all()
            return evicted

    def get(self, timeout: float | None = None) -> T:
        """Next item, waiting up to ``timeout`` (None: forever). Returns CLOSED when done; raises
        TimeoutError when the wait timed out."""
        with self._cond:
            while not self._items and not (self._closed or self._aborted):
                if not self._cond.wait(timeout):
                    raise TimeoutError
            if self._aborted or not self._items:
                return CLOSED
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """No more puts; the consumer drains what is queued, then gets CLOSED."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self) -> list[T]:
        """Wake every waiter now; return (and forget) what was queued."""
        with self._cond:
            self._aborted = True
            left = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return left

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class ChannelClosed(Exception):
    """Raised by ``put`` on a closed or aborted channel."""
