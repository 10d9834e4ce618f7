"""Failed logins slow an attacker down: after too many in a window, that address (and that
user name) must wait until the window has passed."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque

from magickbox.errors import TooManyRequests


class LoginThrottle:
    def __init__(self, max_failures: int, window_seconds: float) -> None:
        self.max, self.window = max_failures, window_seconds
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def check(self, address: str, user: str) -> None:
        """Raise TooManyRequests while the address or the user has had too many failures."""
        now = time.monotonic()
        with self._lock:
            for key in (f"ip:{address}", f"user:{user}"):
                times = self._recent(key, now)
                if len(times) >= self.max:
                    wait = int(times[0] + self.window - now) + 1
                    raise TooManyRequests(f"too many failed logins: try again in {wait} s", wait)

    def failed(self, address: str, user: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in (f"ip:{address}", f"user:{user}"):
                self._recent(key, now).append(now)

    def succeeded(self, address: str, user: str) -> None:
        with self._lock:
            self._failures.pop(f"user:{user}", None)
            self._failures.pop(f"ip:{address}", None)

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures[key]
        while times and times[0] <= now - self.window:
            times.popleft()
        return times
