"""Stats protocol: container stats readings (§5.2), host stats ticks (§5.3), stream lifecycle.

The backend sends no stats commands (stats are pushed), so the wire tables stay empty. The
messages below travel between the StatsActor and the threads it owns.
"""

from __future__ import annotations

from typing import Any

from messages.decoding import CommandDecoder
from messages.records import record
from messages.roles import Role

#: generic ``command`` names this family decodes
GENERIC_DECODERS: dict[str, CommandDecoder] = {}
#: top-level frame ``type``s this family decodes (frame -> typed message or None to ignore)
FRAME_DECODERS: dict[str, Any] = {}
#: which actor role runs each command type
ROUTES: dict[type, Role] = {}


@record(kw_only=True)
class CpuReading:
    total: int  # cpu_stats.cpu_usage.total_usage, ns
    system: int  # cpu_stats.system_cpu_usage, ns
    online_cpus: int  # online_cpus, else len(percpu_usage), else 1


@record(kw_only=True)
class ContainerReading:
    """One Docker stats sample, reduced to what ``container_stats`` needs."""

    cpu: CpuReading
    #: the previous reading (``precpu_stats``); None when Docker sent none yet (first sample)
    precpu: CpuReading | None
    memory_usage: int  # working set, bytes
    memory_limit: int
    network_rx: int
    network_tx: int
    disk_read: int
    disk_write: int


@record(kw_only=True)
class StatsSampled:
    """StatsActor-internal: a container's stats stream delivered one sample."""

    container_id: str
    token: int  # which stream (a container's stream is reopened with a new token)
    reading: ContainerReading | None  # None: Docker says the container is not running


@record(kw_only=True)
class StatsBatch:
    """The samples of every stream since the last batch (a fraction of a second), in order."""

    samples: tuple[StatsSampled, ...]


@record(kw_only=True)
class StatsStreamEnded:
    container_id: str
    token: int
    reason: str
    gone: bool  # Docker answered 404: no such container


@record(kw_only=True)
class RunningContainersListed:
    """Answer to the listing taken at each (re)connect; ``containers`` is None on failure."""

    request: int
    containers: tuple[tuple[str, str], ...] | None  # (full id, name without "/")
    error: str = ""


@record(kw_only=True)
class RetryListing:
    request: int


@record(kw_only=True)
class ApplyStreamChanges:
    """StatsActor-internal timer: open and close the streams the events of the last moment
    asked for (``generation``: the current batch of changes)."""

    generation: int


@record(kw_only=True)
class ParkStreams:
    """StatsActor-internal timer: a moment after the last stream closed, stop the streams'
    loop (``generation``: the idle spell it was set for; a stream opened since ends it)."""

    generation: int


@record(kw_only=True)
class HostStatsTick:
    """Every 2 s while connected: send one host stats frame."""

    generation: int
