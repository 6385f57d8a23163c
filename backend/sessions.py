"""Per-task model state kept across requests (video sessions, embedded images), with TTL and byte budget.

`store.use(key, factory, sizer)` is a context manager: it yields the key's Entry (created with `factory()` on
first use) and holds the entry's lock meanwhile, so requests on one task run one at a time while requests on
other tasks run in parallel. Entries idle for more than `ttl_s`, and the least recently used entries while
the sizes `sizer(value)` add up to more than `budget_bytes`, are closed (`value.close()` when it has one);
an entry in use is never evicted. State lives in one process: each gunicorn worker has its own store.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class Entry:
    """One key's state: `value` (e.g. a VideoSession) plus free-form `state` the caller keeps beside it."""

    key: Hashable
    value: Any = None
    sizer: Callable[[Any], int] = lambda value: 0
    state: dict = field(default_factory=dict)
    last_used: float = 0.0
    users: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def nbytes(self) -> int:
        if self.value is None:
            return 0
        try:
            return int(self.sizer(self.value))
        except Exception:  # a sizer must never break a request
            logger.exception("sizing session %r failed", self.key)
            return 0


class SessionStore:
    """Thread-safe map key -> Entry with TTL and byte-budget eviction."""

    def __init__(self, ttl_s: float, budget_bytes: int, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self.budget_bytes = budget_bytes
        self.clock = clock
        self._entries: dict[Hashable, Entry] = {}
        self._lock = threading.Lock()
        self.created = self.evicted = 0

    @contextlib.contextmanager
    def use(self, key: Hashable, factory: Callable[[], Any], sizer: Callable[[Any], int] = lambda v: 0
            ) -> Iterator[Entry]:
        """Yield the entry of `key`, locked for the caller; `factory()` builds its value on first use."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = Entry(key, sizer=sizer)
            entry.users += 1
        try:
            with entry.lock:
                if entry.value is None:
                    entry.value = factory()  # may raise: the entry stays empty and is dropped below
                    self.created += 1
                try:
                    yield entry
                finally:
                    entry.last_used = self.clock()
        finally:
            with self._lock:
                entry.users -= 1
                if entry.value is None and entry.users == 0 and self._entries.get(key) is entry:
                    del self._entries[key]
            self.evict()

    def release(self, key: Hashable) -> bool:
        """Close and forget `key` (waits for a request using it); False if unknown."""
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is None:
            return False
        with entry.lock:
            _close(entry)
        return True

    def evict(self) -> None:
        """Close expired entries, then least recently used ones while over budget (entries in use stay)."""
        now = self.clock()
        with self._lock:
            idle = sorted((e for e in self._entries.values() if e.users == 0 and e.value is not None),
                          key=lambda e: e.last_used)
            doomed = [e for e in idle if now - e.last_used > self.ttl_s]
            total = sum(e.nbytes() for e in self._entries.values())
            total -= sum(e.nbytes() for e in doomed)
            for e in idle:
                if total <= self.budget_bytes:
                    break
                if e not in doomed:
                    doomed.append(e)
                    total -= e.nbytes()
            for e in doomed:
                del self._entries[e.key]
        for e in doomed:
            logger.info("releasing session %r (idle %.0f s)", e.key, now - e.last_used)
            with e.lock:
                _close(e)
            self.evicted += 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            entries = list(self._entries.values())
        return {"sessions": len(entries), "session_bytes": sum(e.nbytes() for e in entries),
                "sessions_created": self.created, "sessions_evicted": self.evicted}

    def close(self) -> None:
        with self._lock:
            entries, self._entries = list(self._entries.values()), {}
        for e in entries:
            with e.lock:
                _close(e)


def _close(entry: Entry) -> None:
    close = getattr(entry.value, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            logger.exception("closing session %r failed", entry.key)
    entry.value = None
