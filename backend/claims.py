"""Batch answers claimed per (task, prompts, model version), so that Label Studio stores a track once.

Two batch /predict calls for the same task and prompts can overlap: the editor reloads a task after Submit and
Label Studio asks /predict for it (it has no prediction yet), while the user already runs Retrieve Predictions.
Label Studio would store both answers: two identical predictions. The first call claims the key until it has
answered (all its tasks); a call that finds the key claimed answers that task with nothing to store. Once the
first call's answer is stored, Label Studio itself skips the task in later Retrieve Predictions. Per worker
process, like the sessions.
"""
from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable


class AnswerClaims:
    def __init__(self):
        self._held: set[Hashable] = set()
        self._lock = threading.Lock()

    def claim(self, key: Hashable) -> bool:
        """True (and the key is claimed) unless another call holds it."""
        with self._lock:
            if key in self._held:
                return False
            self._held.add(key)
            return True

    def release(self, keys: Iterable[Hashable]) -> None:
        """End the claims of a call that has answered."""
        with self._lock:
            self._held.difference_update(keys)
