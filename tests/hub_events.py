"""Strict payload checks for agent events, by event ``command`` (used by tests/hub.py).

Each validator gets the event payload (already known to be an object) and returns a problem
description, or None when the payload is exactly what the backend expects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

EventValidator = Callable[[dict[str, Any]], str | None]

#: command -> validator; families add theirs here
EVENT_VALIDATORS: dict[str, EventValidator] = {}
