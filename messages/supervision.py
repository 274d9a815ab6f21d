"""Messages between the supervisor and its children."""

from __future__ import annotations

from messages.records import record


@record(kw_only=True)
class ChildFailed:
    """Told by a child's ``on_failure``: generation ``generation`` of ``child_id`` crashed."""

    child_id: str
    generation: int
    error: str
    fatal: bool = False


@record(kw_only=True)
class RestartChildren:
    """Scheduled by the supervisor after its restart backoff."""

    child_ids: tuple[str, ...]


@record(kw_only=True)
class Shutdown:
    """Stop every child in reverse start order, then exit with ``exit_code``."""

    reason: str
    exit_code: int = 0
