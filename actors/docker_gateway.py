"""DockerGateway: owns the Docker request clients and runs every container command.

Handlers only dispatch: each command runs on a small pool of worker threads, each with its own
docker-py ``APIClient`` (docker-py promises no thread safety). Commands for the same container
run one at a time in arrival order; commands for other containers and ``list_containers`` run in
parallel, so a 10 s ``stop`` holds up nothing else. Workers tell their reply to the Connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeAlias, assert_never, cast

import docker
import docker.errors
import pykka

from actors.base import ActorContext, RepeatLimiter, SupervisedActor, TimerHandle
from actors.commands.registry import HANDLERS, FamilyCommand
from actors.commands.tools import DockerTools, Handler, HandlerSettings, describe_docker_error
from actors.host.docker_access import diagnose
from actors.host.host_ips import (
    Interfaces,
    container_host_ips,
    native_host_ips,
    read_host_fib_trie,
    system_interfaces,
)
from actors.rules.policy import CHANGES, Guard, Policy, Refused
from actors.runtime.docker_client import client_factory as docker_clients
from actors.runtime.docker_http import LeanDocker, lean_address
from actors.runtime.memory import release_memory
from actors.runtime.pool import WorkerPool
from messages.common import RawJson, dumps
from messages.docker import (
    ACTION_NAMES,
    CommandFailed,
    CommandSucceeded,
    ContainerEventObserved,
    ContainerOperation,
    ContainerOpFailed,
    ContainerOpSucceeded,
    DescribeHost,
    DockerChecked,
    GetContainerLogs,
    HostDescribed,
    HostInfo,
    InspectContainer,
    KillContainer,
    ListContainers,
    ProbeDocker,
    RemoveContainer,
    RenameContainer,
    Reply,
    RestartContainer,
    StartContainer,
    StopContainer,
)
from messages.records import record
from messages.roles import Role
from messages.status import DockerStatus
from messages.timefmt import rfc3339_nano

log = logging.getLogger(__name__)

#: every message the gateway accepts (besides Ping); anything else is logged and dropped
Inbox: TypeAlias = (
    ListContainers
    | DescribeHost
    | ProbeDocker
    | DockerChecked
    | ContainerEventObserved
    | ContainerOperation
    | FamilyCommand
)

ZERO_TIME = "0001-01-01T00:00:00Z"
_VERBS = {
    "start": "start container",
    "stop": "stop container",
    "restart": "restart container",
    "remove": "remove container",
    "kill": "kill container",
    "rename": "rename container",
    "get_logs": "get container logs",
    "inspect": "inspect container",
}


def detect_own_container_id(
    proc_root: str = "/proc", environ: Mapping[str, str] = os.environ
) -> str | None:
    """The 12-char id of the container we run in, or None (PROTOCOL §7.1, plus mountinfo).

    cgroup v1 paths name the container; under cgroup v2 they don't, but the bind mounts Docker
    makes for /etc/hostname and friends do (``/var/lib/docker/containers/<id>/...``).
    """
    patterns = {
        "self/cgroup": (
            r"/docker/([0-9a-f]{64})",
            r"docker-([0-9a-f]{64})\.scope",
            r"/libpod-([0-9a-f]{64})\.scope",
        ),
        "self/mountinfo": (
            r"/docker/containers/([0-9a-f]{64})/",
            r"/overlay-containers/([0-9a-f]{64})/",
        ),
    }
    for name, regexes in patterns.items():
        try:
            text = Path(proc_root, name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for regex in regexes:
            if match := re.search(regex, text):
                return match.group(1)[:12]
    hostname = environ.get("HOSTNAME", "")
    if len(hostname) >= 12 and re.fullmatch(r"[0-9a-f]{12}", hostname[:12]):
        return hostname[:12]
    return None


def demux_docker_stream(raw: bytes) -> tuple[bytes, bytes]:
    """Split Docker's multiplexed non-TTY stream into (stdout, stderr)."""
    out, err = bytearray(), bytearray()
    i = 0
    while i + 8 <= len(raw):
        kind, size = raw[i], int.from_bytes(raw[i + 4 : i + 8], "big")
        chunk = raw[i + 8 : i + 8 + size]
        (err if kind == 2 else out).extend(chunk)
        i += 8 + size
    return bytes(out), bytes(err)


def env_map(env: list[str] | None) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in env or []:
        key, _, value = item.partition("=")
        result[key] = value
    return result


@record
class _Seen:
    """What list_containers adds for one container, read once by an inspect: ``StartedAt``
    (None before its first start) and ``Env`` (None if the inspect found it gone), with
    ``tail``, the two as the JSON the spliced list appends (``,"StartedAt":...,"Env":...``)."""

    state: str
    started: str | None
    env: dict[str, str] | None
    tail: bytes

    @staticmethod
    def of(state: str, started: str | None, env: dict[str, str] | None) -> _Seen:
        tail = f',"StartedAt":{dumps(started)}' if started else ""
        if env is not None:
            tail += f',"Env":{dumps(env)}'
        return _Seen(state, started, env, tail.encode())


class _ListCache:
    """Per-container ``StartedAt``/``Env`` and per-image ``RepoDigests`` (each with its JSON,
    ``,"RepoDigests":[...]``) for list_containers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.containers: dict[str, _Seen] = {}
        self.images: dict[str, tuple[list[str], bytes]] = {}

    def on_event(self, event: ContainerEventObserved) -> None:
        with self.lock:
            if event.action == "destroy":
                self.containers.pop(event.container_id, None)
            elif event.action in ("start", "restart"):
                entry = self.containers.get(event.container_id)
                if entry is not None:
                    started = rfc3339_nano(event.time_nano)
                    self.containers[event.container_id] = _Seen.of("running", started, entry.env)

    def known(
        self, listed: list[tuple[str, str]]
    ) -> list[tuple[_Seen | None, tuple[list[str], bytes] | None]]:
        """What is cached for each (container, image) of a list, read under one acquisition
        of the lock for the whole list."""
        with self.lock:
            return [(self.containers.get(cid), self.images.get(image)) for cid, image in listed]

    def forget_all_but(self, containers: set[str], images: set[str]) -> None:
        """Drop what belongs to containers and images no longer listed."""
        with self.lock:
            for stale in set(self.containers) - containers:
                del self.containers[stale]
            for stale in set(self.images) - images:
                del self.images[stale]


class DockerGatewayActor(SupervisedActor):
    def __init__(
        self,
        ctx: ActorContext,
        *,
        docker_host: str,
        own_container_id: str | None = None,
        workers: int = 8,
        request_timeout: float = 60.0,
        client_factory: Callable[[], docker.APIClient] | None = None,
        handler_settings: HandlerSettings | None = None,
        policy: Policy | None = None,
        probe_interval: tuple[float, float] = (30.0, 5.0),
        docker_api_version: str | None = None,
        host_proc: str = "/host/proc",
        interfaces: Interfaces = system_interfaces,
    ) -> None:
        super().__init__(ctx)
        self._guard = Guard(policy or Policy(), own_container_id)
        self._host_proc = host_proc
        self._interfaces = interfaces
        # Docker's reachability: probed every probe_interval[0] s while fine, [1] s while not;
        # a problem is logged once, then at a backoff (RepeatLimiter), and told to the status.
        self._probe_ok, self._probe_bad = probe_interval
        self._probe_generation = 0
        self._probe_timer: TimerHandle | None = None
        self._docker_ok: bool | None = None
        self._problem_kind = ""
        self._problem_since = 0.0
        self._problem_log = RepeatLimiter(first=60.0, maximum=3600.0)
        self._docker_host = docker_host
        self._handler_settings = handler_settings or HandlerSettings()
        self._workers = workers
        self._client_factory = client_factory or docker_clients(
            docker_host, timeout=request_timeout, api_version=docker_api_version
        )
        # the lean read path (inspect, list_containers) where it applies: not with an injected
        # client (tests' fakes), not for TLS or ssh hosts (docker-py keeps those)
        self._lean_address = lean_address(docker_host) if client_factory is None else None
        self._lean_settings = (request_timeout, docker_api_version)
        self._local = threading.local()
        self._clients: list[docker.APIClient | LeanDocker] = []
        self._clients_lock = threading.Lock()
        self._pool: WorkerPool | None = None
        self._cache = _ListCache()

    def on_start(self) -> None:
        # one docker-py client per worker thread: the threads stay (no idle exit)
        self._pool = WorkerPool(
            self._workers, "DockerGateway-worker", keep=self._workers, idle_s=None
        )
        self._probe()

    def _release(self) -> None:
        if self._probe_timer is not None:
            self._probe_timer.cancel()
            self._probe_timer = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()

    # --- dispatch --------------------------------------------------------------------------

    def handle(self, message: object) -> Any:
        if not isinstance(message, Inbox):
            log.warning("DockerGateway ignored %s", type(message).__name__)
            return None
        if isinstance(message, FamilyCommand):  # images, networks, volumes, compose files
            handler = HANDLERS[type(message)]
            command = message
            self._submit(None, lambda: self._reply(self._run_handler(handler, command)))
            return None
        match message:
            case ListContainers():
                listing = message
                self._submit(None, lambda: self._reply(self._list_containers(listing)))
            case DescribeHost(attempt=attempt):
                self._submit(None, lambda: self._describe_host(attempt))
            case ProbeDocker(generation=gen) if gen == self._probe_generation:
                self._probe()
            case ProbeDocker():
                pass  # an older timer
            case DockerChecked():
                self._docker_checked(message)
            case ContainerEventObserved():
                self._cache.on_event(message)
            case (
                StartContainer()
                | StopContainer()
                | RestartContainer()
                | RemoveContainer()
                | KillContainer()
                | RenameContainer()
                | GetContainerLogs()
                | InspectContainer()
            ):
                op = message
                self._submit(op.container_id, lambda: self._reply(self._operate(op)))
            case _:
                assert_never(message)
        return None

    def _submit(self, key: str | None, job: Callable[[], None]) -> None:
        """Run ``job`` on a worker; jobs under one ``key`` (a container) one at a time."""
        assert self._pool is not None
        self._pool.submit(job, key=key)

    def _reply(self, reply: Reply) -> None:
        self.ctx.peers.tell(Role.CONNECTION, reply)

    # --- Docker's reachability ---------------------------------------------------------------

    def _probe(self) -> None:
        self._probe_generation += 1
        self._submit(None, self._ping)

    def _docker_checked(self, msg: DockerChecked) -> None:
        now = self.ctx.clock.monotonic()
        if not msg.problem:
            if self._docker_ok is not True:
                if self._docker_ok is False:
                    log.info("Docker at %s is reachable again", self._docker_host)
                self._docker_ok = True
                self._problem_kind = ""
                self._problem_log.clear()
                self._tell_status(reachable=True)
        else:
            if self._docker_ok is not False or msg.kind != self._problem_kind:
                self._docker_ok, self._problem_kind, self._problem_since = False, msg.kind, now
                self._tell_status(reachable=False, error=msg.problem)
            skipped = self._problem_log.check(msg.kind, now)
            if skipped is not None:
                still = (
                    f" (still failing after {now - self._problem_since:.0f}s; {skipped} more "
                    "failures not logged)"
                    if now > self._problem_since
                    else ""
                )
                log.error("%s%s", msg.problem, still)
        if msg.from_probe:
            delay = self._probe_ok if not msg.problem else self._probe_bad
            self._probe_timer = self.tell_self_later(
                delay, ProbeDocker(generation=self._probe_generation)
            )

    def _tell_status(self, *, reachable: bool, error: str = "") -> None:
        status = DockerStatus(reachable=reachable, since_ns=self.ctx.clock.time_ns(), error=error)
        self.ctx.peers.tell(Role.STATUS, status, optional=True)

    def _checked(self, exc: BaseException | None = None, *, from_probe: bool = False) -> None:
        """From a worker: tell the actor whether Docker answered (``exc`` None) or could not."""
        problem = diagnose(self._docker_host, exc) if exc is not None else None
        if exc is not None and problem is None and not from_probe:
            return  # the daemon answered with an error: it is reachable, nothing to report
        message = (
            DockerChecked(problem=problem.text(), kind=problem.kind, from_probe=from_probe)
            if problem is not None
            else DockerChecked(from_probe=from_probe)
        )
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(message)

    def _ping(self) -> None:
        try:
            self._client().ping()
        except Exception as exc:
            self._checked(exc, from_probe=True)
        else:
            self._checked(from_probe=True)
        release_memory()  # after a peak (a big list, many stats streams) RSS comes back down

    def _client(self) -> docker.APIClient:
        client: docker.APIClient | None = getattr(self._local, "client", None)
        if client is None:
            client = self._client_factory()
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _reads(self) -> docker.APIClient | LeanDocker:
        """This worker's client for the hot reads: the lean one where it applies."""
        if self._lean_address is None:
            return self._client()
        lean: LeanDocker | None = getattr(self._local, "lean", None)
        if lean is None:
            timeout, version = self._lean_settings
            lean = LeanDocker(self._lean_address, timeout=timeout, api_version=version)
            self._local.lean = lean
            with self._clients_lock:
                self._clients.append(lean)
        return lean

    # --- worker-side jobs (run on pool threads) ---------------------------------------------

    def _run_handler(self, handler: Handler, message: Any) -> Reply:
        try:
            tools = DockerTools(
                api=self._client(),
                docker_host=self._docker_host,
                settings=self._handler_settings,
            )
        except Exception as exc:
            self._checked(exc)
            return DockerTools(api=cast(Any, None), docker_host=self._docker_host).failed(
                message.request_id, "connect to Docker", exc
            )
        try:
            resolved = self._guard.check(tools.api, message)
        except Refused as exc:
            log.warning("refused %s: %s", type(message).__name__, exc)
            return CommandFailed(
                request_id=message.request_id, error=str(exc), error_type="permission_denied"
            )
        except Exception as exc:
            return tools.failed(message.request_id, CHANGES[type(message)].what, exc)
        if resolved is not None:
            tools = dataclasses.replace(tools, resolved=resolved)
        return handler(tools, message)

    def _operate(self, op: ContainerOperation) -> Reply:
        action = ACTION_NAMES[type(op)]
        try:
            api = self._reads() if isinstance(op, InspectContainer) else self._client()
            try:
                resolved = self._guard.check(api, op)
            except Refused as exc:
                log.warning("refused %s %s: %s", action, op.container_id, exc)
                return ContainerOpFailed(
                    request_id=op.request_id, error=str(exc), error_type="permission_denied"
                )
            # act on the id the guard checked: a rename since then cannot redirect the action
            cid = op.container_id if resolved is None else resolved.container_id
            if isinstance(api, LeanDocker):  # Docker's bytes spliced into the reply as they are
                body = RawJson.wrap("container", api.inspect_container_raw(cid))
            else:
                body = RawJson.of(self._run(api, op, cid))
        except Exception as exc:
            error, error_type = describe_docker_error(_VERBS[action], exc, self._docker_host)
            log.info("%s %s failed: %s", action, op.container_id, error)
            self._checked(exc)
            return ContainerOpFailed(request_id=op.request_id, error=error, error_type=error_type)
        log.info("%s %s: ok", action, op.container_id)
        return ContainerOpSucceeded(request_id=op.request_id, body=body)

    def _run(self, api: Any, op: ContainerOperation, cid: str) -> dict[str, Any]:
        """Act on ``cid`` (the resolved id for changes); replies echo the request's reference."""
        echo = op.container_id
        match op:
            case StartContainer():
                api.start(cid)
                return {"container_id": echo, "status": "started"}
            case StopContainer(timeout=timeout):
                api.stop(cid, timeout=timeout)
                return {"container_id": echo, "status": "stopped"}
            case RestartContainer(timeout=timeout):
                api.restart(cid, timeout=timeout)
                return {"container_id": echo, "status": "restarted"}
            case RemoveContainer(force=force):
                api.remove_container(cid, force=force, v=False)
                return {"container_id": echo, "removed": True}
            case KillContainer():
                api.kill(cid, signal="SIGKILL")
                return {"container_id": echo, "status": "killed"}
            case RenameContainer(new_name=new_name):
                api.rename(cid, new_name)
                return {"container_id": echo, "status": "renamed"}
            case GetContainerLogs(tail=tail):
                return {"logs": self._logs(api, cid, tail)}
            case InspectContainer():
                return {"container": api.inspect_container(cid)}
        raise TypeError(f"unsupported operation {op!r}")

    @staticmethod
    def _logs(api: docker.APIClient, cid: str, tail: int) -> str:
        """Timestamps on; non-TTY output is all stdout then all stderr, like the Go agent."""
        tty = bool(api.inspect_container(cid)["Config"].get("Tty"))
        params = {"stdout": 1, "stderr": 1, "timestamps": 1, "tail": str(tail)}
        # docker-py's public logs() merges the two streams; the Go agent (and the backend's
        # display) wants all stdout then all stderr, so read the raw multiplexed body.
        raw_api = cast(Any, api)
        res = raw_api._get(raw_api._url("/containers/{0}/logs", cid), params=params, stream=True)
        raw_api._raise_for_status(res)
        raw: bytes = res.content
        if tty:
            return raw.decode("utf-8", "replace")
        out, err = demux_docker_stream(raw)
        return (out + err).decode("utf-8", "replace")

    def _list_containers(self, msg: ListContainers) -> Reply:
        try:
            api = self._reads()
            text = self._spliced_list(api) if isinstance(api, LeanDocker) else None
            if text is None:  # docker-py, or a list the splice does not take: decoded
                summaries: list[dict[str, Any]] = api.containers(all=True)
                known = self._cache.known([(s["Id"], s.get("ImageID", "")) for s in summaries])
                for summary, cached in zip(summaries, known, strict=True):
                    seen, (digests, _) = self._added(
                        api,
                        summary["Id"],
                        summary.get("State", ""),
                        summary.get("ImageID", ""),
                        *cached,
                    )
                    summary["RepoDigests"] = digests
                    if seen is not None and seen.started:
                        summary["StartedAt"] = seen.started
                    if seen is not None and seen.env is not None:
                        summary["Env"] = seen.env
                self._cache.forget_all_but(
                    {s["Id"] for s in summaries}, {s.get("ImageID", "") for s in summaries}
                )
                text = dumps(summaries)
        except Exception as exc:
            error, error_type = describe_docker_error("list containers", exc, self._docker_host)
            if diagnose(self._docker_host, exc) is None:
                log.warning("%s", error)
            else:
                self._checked(exc)  # logged by the actor, once and then at a backoff
            return CommandFailed(request_id=msg.request_id, error=error, error_type=error_type)
        return CommandSucceeded(request_id=msg.request_id, payload=RawJson(text))

    def _spliced_list(self, api: LeanDocker) -> str | None:
        """Docker's bytes for each container with the added keys spliced in (summaries.py);
        None if the list is not one the splice takes."""
        # msgspec with the first list, not at start: 3.7 MB and 54 ms an idle agent never needs
        from actors.runtime.summaries import CLOSE, join_containers, split_containers

        listed = split_containers(api.containers_raw(all=True))
        if listed is None:
            return None
        known = self._cache.known([(s.Id, s.ImageID) for s, _ in listed])
        pieces: list[bytes | memoryview] = []
        for (summary, head), cached in zip(listed, known, strict=True):
            seen, (_, digests_json) = self._added(
                api, summary.Id, summary.State, summary.ImageID, *cached
            )
            pieces += (head, digests_json, seen.tail if seen else b"", CLOSE)
        self._cache.forget_all_but({s.Id for s, _ in listed}, {s.ImageID for s, _ in listed})
        return join_containers(pieces)

    def _added(
        self,
        api: docker.APIClient | LeanDocker,
        cid: str,
        state: str,
        image_id: str,
        seen: _Seen | None,
        digests: tuple[list[str], bytes] | None,
    ) -> tuple[_Seen | None, tuple[list[str], bytes]]:
        """What list_containers adds to one container: what the cache holds (``seen``,
        ``digests``: :meth:`_ListCache.known`) or, for a container new or changed state since,
        one inspect (and one per image not seen yet)."""
        if seen is None or seen.state != state:
            try:
                info = api.inspect_container(cid)
            except docker.errors.NotFound:
                info = None  # removed between list and inspect
            if info is not None:
                started = info.get("State", {}).get("StartedAt") or ""
                seen = _Seen.of(
                    state,
                    started if started and not started.startswith("0001-01-01") else None,
                    env_map(info.get("Config", {}).get("Env")),
                )
                with self._cache.lock:
                    self._cache.containers[cid] = seen
        if digests is None:
            found: list[str] = []
            if image_id:
                with contextlib.suppress(docker.errors.NotFound):  # gone: no digests
                    found = list(api.inspect_image(image_id).get("RepoDigests") or [])
                digests = (found, f',"RepoDigests":{dumps(found)}'.encode())
                with self._cache.lock:
                    self._cache.images[image_id] = digests
            else:
                digests = (found, b',"RepoDigests":[]')
        return seen, digests

    def _host_ips(self, api: docker.APIClient) -> list[str]:
        """PROTOCOL §2.2: container mode from the host's fib_trie, else the interfaces."""
        try:
            if self._guard.own_id:
                fib_trie = read_host_fib_trie(self._host_proc)
                if fib_trie is None:
                    return []
                subnets = [
                    str(config.get("Subnet"))
                    for network in api.networks()
                    for config in ((network.get("IPAM") or {}).get("Config") or [])
                    if config.get("Subnet")
                ]
                return container_host_ips(fib_trie, subnets)
            return native_host_ips(self._interfaces)
        except Exception as exc:  # optional keys: register without them rather than not at all
            log.warning("registering without host IPs: %s", exc)
            return []

    def _describe_host(self, attempt: int) -> None:
        try:
            api = self._client()
            info = api.info()
        except Exception as exc:
            error, _ = describe_docker_error("get Docker info", exc, self._docker_host)
            self._checked(exc)
            self.ctx.peers.tell(
                Role.CONNECTION, HostDescribed(attempt=attempt, info=None, error=error)
            )
            return
        self._checked()
        facts: dict[str, Any] = {}
        try:
            version = api.version()
            try:
                started = api.inspect_network("bridge").get("Created", "")
            except docker.errors.NotFound:
                started = ""
            facts = {
                "os_type": info.get("OSType"),
                "os_version": info.get("OperatingSystem"),
                "kernel_version": info.get("KernelVersion"),
                "docker_version": version.get("Version") or "",
                "daemon_started_at": started,
                "total_memory": info.get("MemTotal") or None,
                "num_cpus": info.get("NCPU") or None,
                "host_ips": tuple(self._host_ips(api)),
            }
        except Exception as exc:  # system fields are all-or-nothing (PROTOCOL §2.2)
            log.warning("registering without system facts: %s", exc)
        host = HostInfo(engine_id=info["ID"], daemon_name=info.get("Name"), **facts)
        self.ctx.peers.tell(Role.CONNECTION, HostDescribed(attempt=attempt, info=host))
