"""Batch answers claimed per (task, prompts, model version), so that Label Studio stores a track once.

Two batch /predict calls for the same task and prompts can overlap: the editor reloads a task after Submit and
Label Studio asks /predict for it (it has no prediction yet), while the user already runs Retrieve Predictions.
Label Studio would store both answers: two identical predictions. The first call claims the key; a call that
finds it claimed answers that task with nothing to store. A claim is held while its call runs and GRACE_S after
it answered with a prediction (Label Studio stores it after the whole batch answer arrives), and dropped at once
when its call answered nothing. Per worker process, like the sessions.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable, Iterable

GRACE_S = 10.0


class AnswerClaims:
    def __init__(self, grace_s: float = GRACE_S, clock: Callable[[], float] = time.monotonic):
        self.grace_s = grace_s
        self.clock = clock
        self._until: dict[Hashable, float] = {}  # key -> clock time its claim ends (inf: its call runs)
        self._lock = threading.Lock()

    def claim(self, key: Hashable) -> bool:
        """True (and the key is claimed) unless another call holds it."""
        now = self.clock()
        with self._lock:
            self._until = {k: t for k, t in self._until.items() if t > now}
            if key in self._until:
                return False
            self._until[key] = math.inf
            return True

    def release(self, keys: Iterable[Hashable], answered: bool) -> None:
        """End the claims of a call: after GRACE_S when it answered with a prediction, else at once."""
        end = self.clock() + self.grace_s if answered else -math.inf
        with self._lock:
            for key in keys:
                self._until[key] = end
