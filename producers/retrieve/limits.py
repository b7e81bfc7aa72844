"""The limits a trust's PACS manager agreed, enforced per archive in this process.

* ``TokenBucket``: instances per second (and, separately, queries per second). A bucket holds
  up to ``capacity`` tokens and refills at ``rate`` per second. A C-MOVE of a study takes as
  many tokens as the study has instances *before* it is sent (the archive then sends them as
  fast as it likes, so the limit is kept over time, not inside one study); a study bigger than
  the bucket waits for a full bucket and leaves it in debt, so the next request waits for the
  debt to be repaid. Over any span of T seconds no more than ``capacity + rate * T`` instances
  are asked for, plus one study at most.
* ``Associations``: at most N associations open towards the archive at once (a semaphore
  around every association this process opens).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

_EPSILON = 1e-9


class TokenBucket:
    """Thread-safe token bucket; ``clock`` and ``sleep`` injectable for tests."""

    def __init__(
        self,
        rate: float,
        capacity: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._sleep = sleep
        self._tokens = capacity
        self._stamp = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def delay(self, n: float) -> float:
        """Seconds until ``n`` tokens could be taken (0: now). A request above the capacity
        needs a full bucket."""
        with self._lock:
            self._refill()
            need = min(n, self.capacity)
            return max(0.0, (need - self._tokens - _EPSILON) / self.rate)

    def try_take(self, n: float) -> float:
        """Take ``n`` tokens if they are there (0.0 returned), else the seconds to wait."""
        with self._lock:
            self._refill()
            need = min(n, self.capacity)
            if self._tokens + _EPSILON >= need:  # float rounding must not wait for ever
                self._tokens -= n  # may go negative: a study bigger than the bucket is debt
                return 0.0
            return (need - self._tokens) / self.rate

    def take(self, n: float, stop: threading.Event | None = None) -> bool:
        """Block until ``n`` tokens are taken; True if it had to wait. Returns early (False,
        nothing taken) only if ``stop`` is set."""
        waited = False
        while True:
            wait = self.try_take(n)
            if wait == 0.0:
                return waited
            waited = True
            if self._sleep is not None:
                self._sleep(wait)
            elif stop is not None:
                if stop.wait(wait):
                    raise InterruptedError("stopping")
            else:
                time.sleep(wait)

    def adjust(self, n: float) -> None:
        """Take ``n`` more tokens (or give back, if negative) once the true count is known."""
        with self._lock:
            self._refill()
            self._tokens = min(self.capacity, self._tokens - n)


class Associations:
    """At most ``limit`` associations open at once towards one archive."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit)

    def __enter__(self) -> Associations:
        self._sem.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sem.release()
