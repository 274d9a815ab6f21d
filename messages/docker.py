"""DockerGateway and EventStreamer protocol: container commands, replies, events, host facts."""

from __future__ import annotations

from messages.common import RawJson
from messages.records import record
from messages.references import ContainerName, ContainerRef

# --- container operations (PROTOCOL §4.2), one type per action --------------------------------


@record(kw_only=True)
class _ContainerCommand:
    request_id: str
    container_id: ContainerRef


@record(kw_only=True)
class StartContainer(_ContainerCommand):
    pass


@record(kw_only=True)
class StopContainer(_ContainerCommand):
    timeout: int = 10


@record(kw_only=True)
class RestartContainer(_ContainerCommand):
    timeout: int = 10


@record(kw_only=True)
class RemoveContainer(_ContainerCommand):
    force: bool = False


@record(kw_only=True)
class KillContainer(_ContainerCommand):
    pass


@record(kw_only=True)
class RenameContainer(_ContainerCommand):
    new_name: ContainerName


@record(kw_only=True)
class GetContainerLogs(_ContainerCommand):
    tail: int = 100


@record(kw_only=True)
class InspectContainer(_ContainerCommand):
    pass


ContainerOperation = (
    StartContainer
    | StopContainer
    | RestartContainer
    | RemoveContainer
    | KillContainer
    | RenameContainer
    | GetContainerLogs
    | InspectContainer
)

#: wire action name for each operation type
ACTION_NAMES: dict[type, str] = {
    StartContainer: "start",
    StopContainer: "stop",
    RestartContainer: "restart",
    RemoveContainer: "remove",
    KillContainer: "kill",
    RenameContainer: "rename",
    GetContainerLogs: "get_logs",
    InspectContainer: "inspect",
}


@record(kw_only=True)
class ListContainers:
    request_id: str


# --- replies (told back to the Connection) -------------------------------------------------------


@record(kw_only=True)
class ContainerOpSucceeded:
    """Raw container-op reply; ``body`` is a JSON object whose keys go top-level (§3.3)."""

    request_id: str
    body: RawJson


@record(kw_only=True)
class ContainerOpFailed:
    request_id: str
    error: str
    error_type: str | None = None


@record(kw_only=True)
class CommandSucceeded:
    """Generic command reply: ``{"type":"response","id":…,"payload":…}``."""

    request_id: str
    payload: RawJson


@record(kw_only=True)
class CommandFailed:
    request_id: str
    error: str
    error_type: str | None = None


Reply = ContainerOpSucceeded | ContainerOpFailed | CommandSucceeded | CommandFailed

# --- host facts for `register` -------------------------------------------------------------------


@record(kw_only=True)
class DescribeHost:
    """Asked by the Connection before each registration; answered with :class:`HostDescribed`."""

    attempt: int


@record(kw_only=True)
class HostInfo:
    engine_id: str
    daemon_name: str | None = None
    # The "system fields" below are all present or all None (PROTOCOL §2.2 notes).
    os_type: str | None = None
    os_version: str | None = None
    kernel_version: str | None = None
    docker_version: str | None = None
    daemon_started_at: str | None = None
    total_memory: int | None = None
    num_cpus: int | None = None
    #: the host's addresses (PROTOCOL §2.2); sent only with the system fields, omitted if empty
    host_ips: tuple[str, ...] = ()


@record(kw_only=True)
class HostDescribed:
    attempt: int
    info: HostInfo | None
    error: str | None = None


# --- events ------------------------------------------------------------------------------------


@record(kw_only=True)
class ContainerEventObserved:
    """One Docker container event (PROTOCOL §5.1)."""

    container_id: str
    container_name: str
    image: str
    action: str
    time: int  # seconds
    time_nano: int
    attributes: tuple[tuple[str, str], ...]
    seq: int = 0  # the EventCursor's delivery number (0: not yet tracked)
    #: every event numbered below this was confirmed (or dropped) when this one was numbered:
    #: the cursor never offers those again, so the Connection may forget it sent them
    floor: int = 0

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.time_nano, self.container_id, self.action)


#: the container actions the DockerGateway's cache follows (StartedAt, eviction)
CACHE_ACTIONS = frozenset({"start", "restart", "destroy"})
#: the container actions stats streams follow (PROTOCOL §5.2: start/restart add, die/stop/kill
#: remove); the composition root asks the EventStreamer to tell the stats actor only these
STATS_ACTIONS = frozenset({"start", "restart", "die", "stop", "kill"})


@record(kw_only=True)
class EventsConfirmed:
    """Connection -> EventStreamer: a pong proved the backend read these events."""

    seqs: tuple[int, ...]


@record(kw_only=True)
class ReplayEvents:
    """Connection -> EventStreamer: send every unconfirmed event again (after registering)."""


@record(kw_only=True)
class EventsReplay:
    """EventStreamer -> Connection: every unconfirmed event, oldest first."""

    events: tuple[ContainerEventObserved, ...]


@record(kw_only=True)
class ProbeDocker:
    """DockerGateway-internal timer: check that the daemon answers (``generation``: current)."""

    generation: int


@record(kw_only=True)
class DockerChecked:
    """DockerGateway-internal: a worker reached Docker (``problem`` empty) or could not.

    ``problem`` is the one-line explanation with its fix; ``kind`` its class (permission_denied,
    missing_socket, daemon_down, ...), which decides whether it is the same problem again.
    """

    problem: str = ""
    kind: str = ""
    from_probe: bool = False


@record(kw_only=True)
class DockerEventReceived:
    """EventStreamer-internal: its reader thread read one container event.

    ``event.seq`` > 0: new, numbered by the cursor and already told to the Connection; 0: one
    seen before (the overlap a ``since=`` resubscription replays)."""

    generation: int
    event: ContainerEventObserved


@record(kw_only=True)
class EventStreamEnded:
    """EventStreamer-internal: the reader thread's event stream ended or failed."""

    generation: int
    reason: str


@record(kw_only=True)
class Resubscribe:
    generation: int
