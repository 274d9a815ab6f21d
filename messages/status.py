"""Facts other actors report to the StatusReporter (``$DATA_PATH/status.json``)."""

from __future__ import annotations

from messages.records import record


@record(kw_only=True)
class ConnectionStatus:
    connected: bool
    since_ns: int  # when the current state began (wall clock)
    registrations: int  # successful registrations since the process started
    outbox_depth: int
    outbox_dropped: int
    last_error: str = ""


@record(kw_only=True)
class EventForwarded:
    at_ns: int
    total: int


@record(kw_only=True)
class ActorRestarted:
    child_id: str
    total: int


@record(kw_only=True)
class WriteFailed:
    """A write in DATA_PATH that fails soft (``what``: audit, journal, status) did not happen.

    The StatusReporter counts them per kind in ``status.json`` (``<what>_write_failures``).
    """

    what: str
    error: str


@record(kw_only=True)
class DockerStatus:
    """From the DockerGateway: whether the Docker daemon can be reached, since when, and why not."""

    reachable: bool
    since_ns: int
    error: str = ""


@record(kw_only=True)
class AgentStopping:
    """From the supervisor: the agent is shutting down on purpose (``status.json``: stopped)."""

    reason: str
    exit_code: int


@record(kw_only=True)
class FlushStatus:
    """StatusReporter-internal timer: write the file if something changed (or it is due).

    ``seq`` names the one pending timer; a FlushStatus from a replaced timer is ignored, so
    there is only ever one flush chain.
    """

    seq: int = 0


@record(kw_only=True)
class PublishStatus:
    """EventStreamer-internal timer: send the trailing EventForwarded of a burst."""
