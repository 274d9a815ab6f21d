"""ShellActor: interactive shell sessions in containers (PROTOCOL §4.4, §5.8, §3.6).

Each session is an exec with a TTY whose hijacked Docker socket is owned by a
:class:`ShellSession` and two helper threads the actor starts:

* the **reader** (``ShellActor-reader``) creates and attaches the exec, sends ``started``, then
  sends every output chunk (at most 4096 bytes) as a ``shell_data`` ``data`` event, and ``closed``
  when the output ends for any reason (``error`` instead of ``started`` if the exec cannot be
  created or attached). It is the only producer of a session's events, so they leave in order.
* the **writer** (``ShellActor-writer``) takes input and resizes from the session's FIFO queue and
  writes them to the exec one at a time. The actor only enqueues, so a shell that stops reading its
  stdin never stalls it, and input is written in exactly the order the frames arrived (§3.6; the Go
  agent handles each frame in its own goroutine and may reorder keystrokes).

Closing a session (``close``, connection loss, actor stop) shuts the socket down; both threads
end at once and the session's sockets (the exec stream, its Docker client's connections) are
closed right away, so 200 closed sessions cost no thread and no descriptor a moment later.
Docker keeps a TTY exec running when its attach stream closes, so the shell is then hung up: a
one-off exec sends SIGHUP to every process of the session, found by a random marker in its
environment (``DOCKMON_SHELL_SESSION``), which needs ``sh`` and ``grep`` in the image. Hang-ups
are queued to one :class:`HangUps` worker (one thread, one Docker client, started on demand and
gone when idle) that ends every closed session of a container with a single exec, however many
closed at once.

Input waiting for a shell that does not read is bounded by frames (``max_backlog``) and by bytes
(``max_backlog_bytes``): beyond either, the session is closed.

``shell_data`` events are sent with ``buffer=False``: on a disconnect the backend closes the
browser terminals of this agent and the agent closes every session, so output kept for a later
connection would belong to sessions that no longer exist on either side.

A container the agent's policy protects (``protected_containers``) gets ``error`` instead of a
shell. Shell input and output are never logged.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeAlias, assert_never

import docker
import pykka

from actors.base import ActorContext, SupervisedActor
from actors.commands.tools import describe_docker_error
from actors.rules.policy import Guard, Policy, Refused
from actors.runtime.docker_client import api_client
from actors.runtime.threads import Guarded, Handoff, HelperThread
from messages.common import RawJson
from messages.outbound import EventOut, LinkStateChanged
from messages.records import record
from messages.roles import Role
from messages.shell import (
    OUTPUT_CHUNK,
    CloseShell,
    ResizeShell,
    ShellEnded,
    ShellInput,
    StartShell,
    shell_data,
)

log = logging.getLogger(__name__)

#: every message this actor accepts (besides Ping); anything else is logged and dropped
Inbox: TypeAlias = (
    StartShell | ShellInput | ResizeShell | CloseShell | ShellEnded | LinkStateChanged
)

#: PROTOCOL §4.4: bash if the image has it, else sh
SHELL_COMMAND = (
    "/bin/sh",
    "-c",
    "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi",
)
MARKER_VARIABLE = "DOCKMON_SHELL_SESSION"
#: SIGHUP every process whose environment carries one of the markers (exit 1 if none found);
#: one grep pass over the container's processes for the whole batch
_HANGUP_SCRIPT = (
    "found=1; for f in $(grep -l {patterns} /proc/[0-9]*/environ 2>/dev/null); do "
    'p=${{f#/proc/}}; kill -HUP "${{p%/environ}}" 2>/dev/null && found=0; done; exit $found'
)
#: sessions ended by one hang-up exec at most (keeps its command line a few KiB)
HANGUP_BATCH = 256
#: the hang-up worker waits this long before its first batch: closes come in bursts
HANGUP_GATHER_S = 0.05
#: the backend uses an ``error`` text as a WebSocket close reason, which is capped at 123 bytes
ERROR_LIMIT = 120


@record(kw_only=True)
class ExecStream:
    """An attached exec: its id and the hijacked socket (``keepalive`` pins docker-py's response,
    whose garbage collection would close the socket)."""

    exec_id: str
    sock: socket.socket
    keepalive: object = None

    def close(self) -> None:
        close = getattr(self.keepalive, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()
        with contextlib.suppress(OSError):
            self.sock.close()


class ShellBackend(Protocol):
    """The Docker side of one session; used by one thread at a time (reader, then writer)."""

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        """Docker's inspect object (the policy's guard resolves the container with it)."""
        ...

    def open(self, container_id: str, marker: str) -> ExecStream: ...

    def resize(self, exec_id: str, rows: int, cols: int) -> None: ...

    def hang_up(self, container_id: str, sessions: Sequence[tuple[str, str]]) -> bool | None:
        """End the processes of ``sessions`` ((exec id, marker) pairs) in one container.

        None: none of them runs any more; True: hung up; False: some still run, not hung up.
        """
        ...

    def close(self) -> None: ...


def raw_socket(handle: object) -> socket.socket:
    """The OS socket behind docker-py's ``exec_start(socket=True)`` result.

    docker-py returns the ``socket.SocketIO`` of the hijacked HTTP connection for unix and plain
    tcp hosts (the socket is its ``_sock``) and a socket itself for TLS hosts; anything else (ssh
    channels, named pipes) is not supported.
    """
    if isinstance(handle, socket.socket):
        return handle
    inner = getattr(handle, "_sock", None)
    if isinstance(inner, socket.socket):
        return inner
    raise TypeError(f"unsupported exec attach stream: {type(handle).__name__}")


class DockerShellBackend:
    """docker-py implementation; the client is created lazily on the session's reader thread."""

    def __init__(self, docker_host: str, timeout: int = 15, api_version: str | None = None) -> None:
        self._docker_host = docker_host
        self._timeout = timeout
        self._api_version = api_version
        self._api: docker.APIClient | None = None

    def _client(self) -> docker.APIClient:
        if self._api is None:
            self._api = api_client(
                self._docker_host, timeout=self._timeout, api_version=self._api_version
            )
        return self._api

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        return dict(self._client().inspect_container(container_id))

    def open(self, container_id: str, marker: str) -> ExecStream:
        api = self._client()
        created = api.exec_create(
            container_id,
            list(SHELL_COMMAND),
            stdout=True,
            stderr=True,
            stdin=True,
            tty=True,
            environment=["TERM=xterm-256color", f"{MARKER_VARIABLE}={marker}"],
        )
        exec_id = str(created["Id"])
        handle = api.exec_start(exec_id, tty=True, socket=True)
        try:
            sock = raw_socket(handle)
            sock.settimeout(None)  # docker-py leaves the client's read timeout on it
        except Exception:
            with contextlib.suppress(Exception):
                handle.close()
            raise
        return ExecStream(exec_id=exec_id, sock=sock, keepalive=handle)

    def resize(self, exec_id: str, rows: int, cols: int) -> None:
        self._client().exec_resize(exec_id, height=rows, width=cols)

    def hang_up(self, container_id: str, sessions: Sequence[tuple[str, str]]) -> bool | None:
        api = self._client()
        patterns = " ".join(f"-e '{MARKER_VARIABLE}={marker}'" for _, marker in sessions)
        killer = api.exec_create(
            container_id,
            ["/bin/sh", "-c", _HANGUP_SCRIPT.format(patterns=patterns)],
            stdout=True,
            stderr=True,
        )
        api.exec_start(killer["Id"])  # waits for the (short) script to finish
        if api.exec_inspect(killer["Id"]).get("ExitCode") == 0:
            return True
        # nothing found: fine if the shells ended by themselves; a problem if one still runs
        running = any(api.exec_inspect(exec_id).get("Running") for exec_id, _ in sessions)
        return False if running else None

    def close(self) -> None:
        api, self._api = self._api, None
        if api is not None:
            with contextlib.suppress(Exception):
                api.close()


@record
class _Resize:
    rows: int
    cols: int


def _shut_down(stream: ExecStream) -> None:
    stream.sock.shutdown(socket.SHUT_RDWR)


class HangUps:
    """Hangs up the shells of closed sessions, batched per container, on one worker thread.

    The thread (and its Docker client) exists only while there is work: it is started by the
    first :meth:`submit` and ends when the queue is empty, so closing many sessions at once
    costs one thread and one exec per container, not a thread and an exec per session.
    """

    def __init__(
        self,
        backend_factory: Callable[[], ShellBackend],
        describe_error: Callable[[str, BaseException], str],
    ) -> None:
        self._factory = backend_factory
        self._describe_error = describe_error
        self._lock = threading.Lock()
        self._pending: dict[str, list[tuple[str, str]]] = {}  # container -> (exec id, marker)
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()

    def submit(self, container_id: str, exec_id: str, marker: str) -> None:
        with self._lock:
            self._pending.setdefault(container_id, []).append((exec_id, marker))
            self._idle.clear()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="ShellActor-hangups", daemon=True
                )
                self._thread.start()

    def wait_idle(self, timeout: float) -> bool:
        """True once every submitted hang-up was tried (for the actor's stop)."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        backend: ShellBackend | None = None
        time.sleep(HANGUP_GATHER_S)  # on the worker thread: a burst of closes is one batch
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        self._thread = None
                        self._idle.set()
                        return
                    container_id = next(iter(self._pending))
                    queued = self._pending[container_id]
                    batch, rest = queued[:HANGUP_BATCH], queued[HANGUP_BATCH:]
                    if rest:
                        self._pending[container_id] = rest
                    else:
                        del self._pending[container_id]
                if backend is None:
                    backend = self._factory()
                self._hang_up(backend, container_id, batch)
        finally:
            if backend is not None:
                backend.close()

    def _hang_up(
        self, backend: ShellBackend, container_id: str, batch: list[tuple[str, str]]
    ) -> None:
        try:
            hung_up = backend.hang_up(container_id, batch)
        except Exception as exc:
            log.info(
                "shell sessions in container %s: could not check or end the shell processes: %s",
                container_id[:12],
                _short(self._describe_error("end shell", exc)),
            )
            return
        if hung_up is False:
            log.warning(
                "%d shell session(s) in container %s still run after their stream closed and "
                "could not be hung up (the image needs sh and grep)",
                len(batch),
                container_id[:12],
            )


def _short(text: str) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= ERROR_LIMIT:
        return text
    return raw[: ERROR_LIMIT - 3].decode("utf-8", "ignore") + "..."


class ShellSession:
    """One session's exec socket and its reader and writer threads (owned by the ShellActor)."""

    def __init__(
        self,
        *,
        session_id: str,
        container_id: str,
        serial: int,
        backend: ShellBackend,
        emit: Callable[[dict[str, str]], None],
        ended: Callable[[], None],
        describe_error: Callable[[str, BaseException], str],
        hang_up: Callable[[str, str, str], None],
        guard: Guard | None = None,
        join_timeout: float = 2.0,
    ) -> None:
        self.session_id = session_id
        self.container_id = container_id
        self.serial = serial
        self.marker = uuid.uuid4().hex
        self._backend = backend
        self._emit = emit
        self._ended = ended
        self._describe_error = describe_error
        self._hang_up = hang_up
        self._guard = guard or Guard()
        self._join_timeout = join_timeout
        self._pending: Handoff[bytes | _Resize] = Handoff()
        self._pending_bytes = 0  # input queued for the writer, not written yet
        self._lock = threading.Lock()
        # close() shuts the socket down (both threads end); the writer closes it after the reader
        self._stream: Guarded[ExecStream] = Guarded(wake=_shut_down, dispose=ExecStream.close)
        self._reader = HelperThread("ShellActor-reader", self._read)
        self._writer = HelperThread("ShellActor-writer", self._write)

    # --- called by the actor (never blocks) ------------------------------------------------------

    def start(self) -> None:
        self._reader.start()

    def backlog(self) -> int:
        return self._pending.qsize()

    def backlog_bytes(self) -> int:
        with self._lock:
            return self._pending_bytes

    def write(self, data: bytes) -> None:
        with self._lock:
            self._pending_bytes += len(data)
        self._pending.put(data)

    def resize(self, rows: int, cols: int) -> None:
        self._pending.put(_Resize(rows, cols))

    def close(self) -> None:
        """Idempotent: end the output (the reader sends ``closed``) and stop the writer."""
        if self._stream.close():
            self._pending.stop()

    def join(self, deadline: float) -> None:
        for thread in (self._reader, self._writer):
            thread.join(deadline - time.monotonic(), warn=False)

    @property
    def alive(self) -> bool:
        return self._reader.alive or self._writer.alive

    # --- reader thread ---------------------------------------------------------------------------

    def _read(self) -> None:
        denial: str | None = None
        stream = None
        try:
            # resolve once, check, then exec in exactly that container (never by name again)
            start = StartShell(session_id=self.session_id, container_id=self.container_id)
            resolved = self._guard.check(self._backend, start)
            assert resolved is not None
            self.container_id = resolved.container_id
            stream = self._backend.open(self.container_id, self.marker)
        except Refused as exc:
            denial = str(exc)
        except Exception as exc:
            denial = self._describe_error("start shell", exc)
        if stream is None:
            error = _short(denial or "failed to start shell")
            log.warning("shell session %s: could not open a shell: %s", self.session_id, error)
            self._backend.close()
            self._emit(shell_data(self.session_id, "error", error=error))
            self._ended()
            return
        if not self._stream.adopt(stream):  # closed while attaching: closed, never read
            log.info("shell session %s: closed before it was attached", self.session_id)
            self._release(stream)
            self._emit(shell_data(self.session_id, "closed"))
            self._ended()
            return
        log.info("shell session %s: attached (exec %s)", self.session_id, stream.exec_id[:12])
        self._emit(shell_data(self.session_id, "started"))
        self._writer.start()
        reason = "end of output"
        try:
            while True:
                chunk = stream.sock.recv(OUTPUT_CHUNK)
                if not chunk:
                    break
                self._emit(shell_data(self.session_id, "data", data=chunk))
        except OSError as exc:
            reason = type(exc).__name__
        finally:
            self.close()
            self._emit(shell_data(self.session_id, "closed"))
            log.info("shell session %s: closed (%s)", self.session_id, reason)
            self._ended()

    # --- writer thread ---------------------------------------------------------------------------

    def _write(self) -> None:
        stream = self._stream.resource
        assert stream is not None
        try:
            while (item := self._pending.get()) is not None:
                if isinstance(item, _Resize):
                    try:
                        self._backend.resize(stream.exec_id, item.rows, item.cols)
                    except Exception as exc:
                        log.info(
                            "shell session %s: resize failed: %s",
                            self.session_id,
                            _short(self._describe_error("resize shell", exc)),
                        )
                    continue
                with self._lock:
                    self._pending_bytes -= len(item)
                try:
                    stream.sock.sendall(item)
                except OSError as exc:
                    log.info(
                        "shell session %s: input not written (%s); closing",
                        self.session_id,
                        type(exc).__name__,
                    )
                    return
        finally:
            self.close()
            self._reader.join(self._join_timeout, warn=False)  # never close under a recv()
            self._release(stream)

    def _release(self, stream: ExecStream) -> None:
        """Release the socket and the client now; the shell is hung up by the HangUps worker."""
        try:
            self._stream.dispose()  # a stream refused by adopt() is closed already
            self._backend.close()
        finally:
            self._hang_up(self.container_id, stream.exec_id, self.marker)


BackendFactory = Callable[[], ShellBackend]


class ShellActor(SupervisedActor):
    """Role ``shell``: routes ``shell_session`` commands to their :class:`ShellSession`."""

    def __init__(
        self,
        ctx: ActorContext,
        *,
        docker_host: str,
        backend_factory: BackendFactory | None = None,
        policy: Policy | None = None,
        max_backlog: int = 4096,
        max_backlog_bytes: int = 4 * 1024 * 1024,
        stop_timeout: float = 2.0,
        docker_api_version: str | None = None,
    ) -> None:
        super().__init__(ctx)
        if max_backlog < 1 or max_backlog_bytes < 1:
            raise ValueError("max_backlog and max_backlog_bytes must be positive")
        self._docker_host = docker_host
        self._backend_factory: BackendFactory = backend_factory or (
            lambda: DockerShellBackend(docker_host, api_version=docker_api_version)
        )
        self._guard = Guard(policy or Policy())
        self._max_backlog = max_backlog
        self._max_backlog_bytes = max_backlog_bytes
        self._stop_timeout = stop_timeout
        self._sessions: dict[str, ShellSession] = {}
        self._serial = 0
        self._hangups = HangUps(self._backend_factory, self._describe_error)

    @property
    def session_ids(self) -> tuple[str, ...]:
        return tuple(self._sessions)

    def _release(self) -> None:
        sessions = list(self._sessions.values())
        self._sessions.clear()
        for session in sessions:
            session.close()
        deadline = time.monotonic() + self._stop_timeout
        for session in sessions:
            session.join(deadline)
        stuck = sum(1 for s in sessions if s.alive)
        if stuck:
            log.warning("%d shell session thread(s) did not stop in time", stuck)
        if not self._hangups.wait_idle(max(0.1, deadline - time.monotonic())):
            log.warning("the shells of closed sessions were not all hung up in time")

    def handle(self, message: object) -> Any:
        if not isinstance(message, Inbox):
            log.warning("ShellActor ignored %s", type(message).__name__)
            return None
        match message:
            case StartShell():
                self._start(message)
            case ShellInput(session_id=sid, data=data):
                self._input(sid, data)
            case ResizeShell(session_id=sid, cols=cols, rows=rows):
                session = self._sessions.get(sid)
                if session is None:
                    log.info("ignored resize for unknown shell session %s", sid)
                else:
                    session.resize(rows, cols)
            case CloseShell(session_id=sid):
                session = self._sessions.pop(sid, None)
                if session is None:
                    log.info("ignored close for unknown shell session %s", sid)
                else:
                    session.close()
            case ShellEnded(session_id=sid, serial=serial):
                session = self._sessions.get(sid)
                if session is not None and session.serial == serial:
                    del self._sessions[sid]
            case LinkStateChanged(connected=False):
                self._close_all("connection to DockMon lost")
            case LinkStateChanged():
                pass
            case _:
                assert_never(message)
        return None

    def _start(self, msg: StartShell) -> None:
        if msg.session_id in self._sessions:
            log.info("ignored start for shell session %s: already in use", msg.session_id)
            return
        self._serial += 1
        serial = self._serial
        ref = self.actor_ref
        peers = self.ctx.peers
        session_id = msg.session_id

        def emit(payload: dict[str, str]) -> None:
            peers.tell(
                Role.CONNECTION,
                EventOut(command="shell_data", payload=RawJson.of(payload), buffer=False),
            )

        def ended() -> None:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(ShellEnded(session_id=session_id, serial=serial))

        session = ShellSession(
            session_id=session_id,
            container_id=msg.container_id,
            serial=serial,
            backend=self._backend_factory(),
            emit=emit,
            ended=ended,
            describe_error=self._describe_error,
            hang_up=self._hangups.submit,
            guard=self._guard,
        )
        self._sessions[session_id] = session
        log.info("shell session %s: opening a shell in %s", session_id, msg.container_id[:64])
        session.start()

    def _describe_error(self, what: str, exc: BaseException) -> str:
        return describe_docker_error(what, exc, self._docker_host)[0]

    def _input(self, session_id: str, data: bytes) -> None:
        session = self._sessions.get(session_id)
        if session is None:
            log.info("ignored shell input for unknown session %s", session_id)
            return
        if not data:
            return
        if session.backlog() >= self._max_backlog:
            too_much = f"more than {self._max_backlog} input frames"
        elif session.backlog_bytes() + len(data) > self._max_backlog_bytes:
            too_much = f"more than {self._max_backlog_bytes} bytes of input"
        else:
            too_much = ""
        if too_much:
            log.warning("shell session %s: %s wait for the shell; closing it", session_id, too_much)
            del self._sessions[session_id]
            session.close()
            return
        session.write(data)

    def _close_all(self, reason: str) -> None:
        if not self._sessions:
            return
        log.info("%s: closing %d shell session(s)", reason, len(self._sessions))
        sessions = list(self._sessions.values())
        self._sessions.clear()
        for session in sessions:
            session.close()
