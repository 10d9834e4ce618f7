"""A worker loop's sign of life, read by the heartbeat (``heartbeat.py``).

A loop says when it goes to sleep waiting for work (it came round) and when it wakes to
work; a long job may also say it makes progress. A sleeping loop is healthy however long
it sleeps; a working one silent for long is hung. Waking a loop and watching for it to
come round again tells whether it still turns.
"""

from __future__ import annotations

import threading
import time


class Pulse:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        now = time.monotonic()
        self._round = now  # when the loop last came round (went to sleep)
        self._busy_since = now  # when it last woke or made progress
        self._sleeping = False

    def sleeping(self) -> None:
        """The loop came round and waits for work."""
        with self._lock:
            self._round, self._sleeping = time.monotonic(), True

    def working(self) -> None:
        """The loop woke up to work (or made progress in a long piece of work)."""
        with self._lock:
            self._busy_since, self._sleeping = time.monotonic(), False

    def busy_for(self) -> float:
        """Seconds since a working loop woke or made progress; 0 while it sleeps."""
        with self._lock:
            return 0.0 if self._sleeping else time.monotonic() - self._busy_since

    def came_round_since(self, since: float, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the loop to come round after ``since`` (monotonic)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._round >= since:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
