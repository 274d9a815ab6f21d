"""Exponential backoff, written once: every retry delay of the agent comes from here.

Delay ``n`` (counting from 0) is ``min(maximum, initial * 2**n)``; with ``jitter`` it is drawn
uniformly from ``[0, that]`` ("full jitter", so many agents cut off at once do not come back in
step). The exponent is capped, so a failure that lasts for days never overflows the float.

The users and the rules each keeps:

* the Connection's reconnects: ``RECONNECT_INITIAL`` doubling to ``RECONNECT_MAX``, reset after
  a successful registration (PROTOCOL §9); full jitter, where the Go agent has none;
* the stats ingest socket: 1 s doubling to 30 s, never reset, no jitter (§1.5, §9);
* the EventStreamer's resubscribe and the stats listing's retry: reset once Docker answers;
* :class:`actors.base.RepeatLimiter`'s growing quiet interval between repeated log lines;
* the supervisor's restart delay (:func:`exponential`, from the restarts in its window).
"""

from __future__ import annotations

import random

#: 2**32 times any sensible initial delay is far beyond any sensible maximum
_MAX_EXPONENT = 32


def exponential(initial: float, maximum: float, attempt: int) -> float:
    """The delay before retry ``attempt`` (0: the first): ``min(maximum, initial * 2**attempt)``."""
    return min(maximum, initial * float(2 ** min(max(attempt, 0), _MAX_EXPONENT)))


class Backoff:
    """Retry delays that double from ``initial`` up to ``maximum``.

    ``next_delay()`` gives the delay for the current failure and counts it; ``reset()`` starts
    again from ``initial``. ``jitter``: each delay is uniform in ``[0, cap()]`` instead of
    ``cap()`` itself (``rng`` makes it reproducible).
    """

    def __init__(
        self,
        initial: float,
        maximum: float,
        rng: random.Random | None = None,
        *,
        jitter: bool = True,
    ) -> None:
        self.initial, self.maximum = initial, maximum
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.failures = 0

    def cap(self) -> float:
        """The delay for the next failure without jitter (its upper bound with jitter)."""
        return exponential(self.initial, self.maximum, self.failures)

    def next_delay(self) -> float:
        cap = self.cap()
        delay = self._rng.uniform(0, cap) if self.jitter else cap
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0
