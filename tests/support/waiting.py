"""Wait for a condition with a deadline (for state that no event announces)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def wait_for(
    predicate: Callable[[], object], timeout: float, what: str | Callable[[], str]
) -> None:
    """``what`` names the condition; a callable is asked at the timeout (to show the state)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise TimeoutError(f"timed out after {timeout}s waiting for {said}")
        pause.wait(0.02)
