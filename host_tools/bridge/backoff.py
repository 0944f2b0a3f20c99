"""Reconnect back-off of OCPP 2.0.1 Part 4 §5.3 (RetryBackOff* variables).

The first wait is RetryBackOffWaitMinimum plus a random share of
RetryBackOffRandomRange; each following wait doubles the minimum part, for
RetryBackOffRepeatTimes doublings, then stays there. The random part keeps a
fleet of stations that lost the CSMS together from reconnecting in one burst.
"""

import random


class Backoff:
    def __init__(self, wait_minimum_s=3.0, random_range_s=10.0, repeat_times=5, rng=None):
        if wait_minimum_s < 0 or random_range_s < 0 or repeat_times < 0:
            raise ValueError("back-off parameters must not be negative")
        self.wait_minimum_s = wait_minimum_s
        self.random_range_s = random_range_s
        self.repeat_times = repeat_times
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        """Seconds to wait before the next connection attempt."""
        doublings = min(self.attempt, self.repeat_times)
        self.attempt += 1
        return self.wait_minimum_s * (2 ** doublings) + self._rng.uniform(0, self.random_range_s)

    def reset(self) -> None:
        """Connected: the next loss starts from the minimum again."""
        self.attempt = 0
