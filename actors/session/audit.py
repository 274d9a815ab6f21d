"""The audit bookkeeping of the requests DockMon sends: which get an audit line, with what result,
and which are still waiting for their reply (issue 10.4: one request id, one request).

A request is recorded once: when it is refused (``denied: …`` by the policy, ``rejected: …``
by the codec or as a duplicate id), when it runs without a reply to wait for (``accepted``),
or, if it carries an id, when its reply goes out (``ok`` or ``error: …``). Shell keystrokes
and resizes get no line. The lines are written by the actor (actors/rules/policy.py:
``AuditLog``); this table never does I/O.
"""

from __future__ import annotations

from messages.docker import Reply
from messages.records import record
from messages.wire import Request

#: requests whose reply has not gone out yet, remembered for the audit log (oldest dropped)
AUDIT_PENDING_LIMIT = 10_000


@record
class AuditLine:
    """One line for the audit log (its time and who are added when it is written)."""

    operation: str
    target: str | None
    result: str


class AuditBook:
    """The pending request table and the audit lines of requests and replies."""

    def __init__(self, limit: int = AUDIT_PENDING_LIMIT) -> None:
        self._limit = limit
        #: request id -> (operation, target) of the request waiting for its reply
        self._pending: dict[str, tuple[str, str | None]] = {}

    @property
    def pending(self) -> int:
        return len(self._pending)

    def duplicate(self, request: Request) -> str | None:
        """Why the request is refused because its id is that of a request still pending (the
        error its reply carries), or None."""
        if request.request_id is None or request.request_id not in self._pending:
            return None
        first = self._pending[request.request_id][0]
        return (
            f"duplicate request id {request.request_id}: a {first} request with this id is "
            "still pending"
        )

    def denied(self, request: Request, denial: str) -> AuditLine | None:
        """The policy refused it."""
        return self._line(request, f"denied: {denial}")

    def rejected(self, request: Request, error: str) -> AuditLine | None:
        """Answered with an error without running (bad payload, unknown command, duplicate id)."""
        return self._line(request, f"rejected: {error}")

    def accepted(self, request: Request) -> AuditLine | None:
        """It runs: a request with an id waits for its reply (recorded then); one without is
        recorded now."""
        if request.request_id is None:
            return self._line(request, "accepted")
        self._pending[request.request_id] = (request.operation, request.target)
        while len(self._pending) > self._limit:
            self._pending.pop(next(iter(self._pending)))  # the oldest
        return None

    def answered(self, reply: Reply) -> AuditLine | None:
        """Its reply goes out: the request's line, with the result; its id is free again."""
        entry = self._pending.pop(reply.request_id, None)
        if entry is None:
            return None
        error = getattr(reply, "error", None)
        return AuditLine(entry[0], entry[1], f"error: {error}" if error else "ok")

    @staticmethod
    def _line(request: Request, result: str) -> AuditLine | None:
        return AuditLine(request.operation, request.target, result) if request.audited else None
