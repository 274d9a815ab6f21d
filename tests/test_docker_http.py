"""The lean read path (actors/runtime/docker_http.py) and the JSON codec it feeds.

HTTP framing and connection faults are scripted on a local unix socket (deterministic); the
same reads, their errors and their wording are then proven against the real private dockerd,
side by side with docker-py's.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from actors.commands.tools import describe_docker_error
from actors.host.docker_access import diagnose
from actors.runtime.docker_http import LeanDocker, api_error, lean_address
from messages.common import RawJson, dumps, loads
from tests.support.agent_harness import running_agent
from tests.support.daemon import PrivateDockerd

# --- pure parts ------------------------------------------------------------------------------


def test_lean_address_takes_unix_and_plain_tcp_and_leaves_the_rest_to_docker_py() -> None:
    assert lean_address("unix:///var/run/docker.sock") == ("unix", "/var/run/docker.sock")
    assert lean_address("tcp://127.0.0.1:2375") == ("tcp", ("127.0.0.1", 2375))
    assert lean_address("http://localhost") == ("tcp", ("localhost", 2375))
    assert lean_address("https://127.0.0.1:2376") is None
    assert lean_address("ssh://user@host") is None
    assert lean_address("tcp://127.0.0.1:2375/prefix") is None


def test_error_status_is_docker_pys_exception_with_dockers_message() -> None:
    missing = api_error(404, "Not Found", b'{"message":"No such container: abc"}\n')
    assert isinstance(missing, docker.errors.NotFound)
    assert missing.explanation == "No such container: abc"
    image = api_error(404, "Not Found", b'{"message":"No such image: sha256:12"}')
    assert isinstance(image, docker.errors.ImageNotFound)
    broken = api_error(500, "Internal Server Error", b"plain text\n")
    assert type(broken) is docker.errors.APIError and broken.explanation == "plain text"
    error, kind = describe_docker_error("inspect container", missing, "unix:///x")
    assert error == (
        "failed to inspect container: Error response from daemon: No such container: abc"
    )
    assert kind == "docker_error"


def test_dumps_writes_what_json_wrote_for_jsonable_values() -> None:
    values: list[Any] = [
        {"a": [1, 2.5, None, True, False], "ü": "snow ☃", "q": 'say "hi"\n\t\x01'},
        [],
        {},
        "x",
        {"nested": {"deep": [{"k": "v"}]}},
    ]
    for value in values:
        assert dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_dumps_falls_back_to_json_where_orjson_refuses_and_never_writes_nan() -> None:
    assert dumps({1: "a", None: "b"}) == '{"1":"a","null":"b"}'  # non-str keys, as json did
    big = 2**70
    assert dumps([big]) == f"[{big}]"
    assert dumps({"x": float("nan"), "y": float("inf")}) == '{"x":null,"y":null}'
    lone = "\ud800"
    assert dumps(lone) == json.dumps(lone, ensure_ascii=False)
    with pytest.raises(TypeError):
        dumps({"s": {1, 2}})


def test_raw_json_wrap_splices_valid_bytes_and_refuses_anything_else() -> None:
    raw = b'{"Id":"abc","Name":"/web","Config":{"Labels":{"a":"\\u003cb\\u003e"}}}\n'
    wrapped = RawJson.wrap("container", raw)
    assert wrapped.text == '{"container":' + raw.decode().strip() + "}"
    assert wrapped.value()["container"]["Config"]["Labels"]["a"] == "<b>"
    for bad in (b'{"Id":', b"", b"\xff\xfe", b"{} {}"):
        with pytest.raises(ValueError):
            RawJson.wrap("container", bad)


# --- HTTP framing and faults on a scripted socket ------------------------------------------------

Script = Callable[[socket.socket, int], None]  # (connection, request number on it)


@contextlib.contextmanager
def scripted(tmp_path: Path, script: Script) -> Iterator[tuple[str, list[int]]]:
    """A unix socket server running ``script`` for each request; yields (path, per-connection
    request counts)."""
    path = str(tmp_path / "fake.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    counts: list[int] = []
    stop = threading.Event()

    def serve(conn: socket.socket, index: int) -> None:
        with conn:
            n = 0
            buffer = b""
            while not stop.is_set():
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                _, buffer = buffer.split(b"\r\n\r\n", 1)
                counts[index] += 1
                try:
                    script(conn, n)
                except OSError:
                    return
                n += 1

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            counts.append(0)
            threading.Thread(target=serve, args=(conn, len(counts) - 1), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield path, counts
    finally:
        stop.set()
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        acceptor.join(5)


def _json(body: bytes, *, status: str = "200 OK", extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_chunked_bodies_are_joined_and_the_connection_is_kept(tmp_path: Path) -> None:
    body = json.dumps([{"Id": str(i), "pad": "x" * 5000} for i in range(40)]).encode()

    def script(conn: socket.socket, _n: int) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        parts = [head + b"Transfer-Encoding: chunked\r\n\r\n"]
        for i in range(0, len(body), 7777):
            chunk = body[i : i + 7777]
            parts.append(f"{len(chunk):x};ext=1\r\n".encode() + chunk + b"\r\n")
        parts.append(b"0\r\nX-Trailer: 1\r\n\r\n")
        conn.sendall(b"".join(parts))

    with scripted(tmp_path, script) as (path, counts):
        lean = LeanDocker(("unix", path), timeout=5)
        for _ in range(3):
            assert lean.containers(all=True) == json.loads(body)
        lean.close()
    assert lean.connections == 1 and counts == [3]


def test_a_kept_connection_the_daemon_closed_is_reopened_once(tmp_path: Path) -> None:
    def script(conn: socket.socket, n: int) -> None:
        conn.sendall(_json(b'{"Id":"a"}'))
        conn.shutdown(socket.SHUT_RDWR)  # like a daemon restart between two requests

    with scripted(tmp_path, script) as (path, counts):
        lean = LeanDocker(("unix", path), timeout=5)
        assert lean.inspect_container("a") == {"Id": "a"}
        assert lean.inspect_container("a") == {"Id": "a"}
        lean.close()
    # the second request may reach the first connection before its shutdown does (then that
    # connection counts it, unanswered); either way it is answered on a second connection, once
    assert lean.connections == 2 and len(counts) == 2 and counts[1] == 1


def test_connection_close_and_http_1_0_are_honoured(tmp_path: Path) -> None:
    def script(conn: socket.socket, n: int) -> None:
        if n == 0:
            conn.sendall(_json(b"{}", extra="Connection: close\r\n"))
        conn.shutdown(socket.SHUT_RDWR)

    with scripted(tmp_path, script) as (path, _):
        lean = LeanDocker(("unix", path), timeout=5)
        assert lean.get("/x") == b"{}"
        assert lean.get("/x") == b"{}"
        assert lean.connections == 2
        lean.close()

    def until_eof(conn: socket.socket, n: int) -> None:
        conn.sendall(b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"a":1}')
        conn.shutdown(socket.SHUT_RDWR)

    (tmp_path / "fake.sock").unlink()
    with scripted(tmp_path, until_eof) as (path, _):
        lean = LeanDocker(("unix", path), timeout=5)
        assert lean.get("/x") == b'{"a":1}'
        lean.close()


def test_an_error_status_keeps_the_connection_and_dockers_wording(tmp_path: Path) -> None:
    def script(conn: socket.socket, n: int) -> None:
        if n == 0:
            body = b'{"message":"No such container: nope"}\n'
            conn.sendall(_json(body, status="404 Not Found"))
        elif n == 1:
            body = b'{"message":"driver failed"}'
            conn.sendall(_json(body, status="500 Internal Server Error"))
        else:
            conn.sendall(_json(b'{"Id":"ok"}'))

    with scripted(tmp_path, script) as (path, counts):
        lean = LeanDocker(("unix", path), timeout=5, api_version="1.41")
        with pytest.raises(docker.errors.NotFound) as missing:
            lean.inspect_container_raw("nope")
        assert missing.value.explanation == "No such container: nope"
        with pytest.raises(docker.errors.APIError) as broken:
            lean.inspect_container_raw("x")
        error, _ = describe_docker_error("list containers", broken.value, "unix:///s")
        assert error == "failed to list containers: Error response from daemon: driver failed"
        assert lean.inspect_container("ok") == {"Id": "ok"}
        lean.close()
    assert counts == [3]


def test_a_daemon_that_does_not_answer_is_a_timeout(tmp_path: Path) -> None:
    answered = threading.Event()

    def script(conn: socket.socket, n: int) -> None:
        answered.wait(10)

    with scripted(tmp_path, script) as (path, _):
        lean = LeanDocker(("unix", path), timeout=0.2)
        with pytest.raises(requests.exceptions.ReadTimeout) as timeout:
            lean.get("/x")
        answered.set()
        lean.close()
    error, _ = describe_docker_error("inspect container", timeout.value, "unix:///s")
    assert error == "failed to inspect container: timed out waiting for the Docker daemon"


def test_garbage_from_the_socket_is_a_connection_error_not_a_crash(tmp_path: Path) -> None:
    def script(conn: socket.socket, n: int) -> None:
        conn.sendall(b"SSH-2.0-OpenSSH\r\n\r\n")

    with scripted(tmp_path, script) as (path, _):
        lean = LeanDocker(("unix", path), timeout=5)
        with pytest.raises(requests.exceptions.ConnectionError):
            lean.get("/x")
        lean.close()


# --- against the real daemon ------------------------------------------------------------------


def _lean(dockerd: PrivateDockerd, **kwargs: Any) -> LeanDocker:
    address = lean_address(dockerd.base_url)
    assert address is not None
    return LeanDocker(address, timeout=30, **kwargs)


def test_reads_equal_docker_pys_on_the_real_daemon(
    dockerd: PrivateDockerd, docker_client: docker.DockerClient, make_container: Any
) -> None:
    made = [make_container(["sleep", "3600"]) for _ in range(3)]
    api = docker_client.api
    lean = _lean(dockerd, api_version="1.41")
    try:
        for c in made:
            raw = lean.inspect_container_raw(c.id[:12])
            assert loads(raw) == api.inspect_container(c.id)
            image = loads(raw)["Image"]
            assert lean.inspect_image(image) == api.inspect_image(image)
        ours = {s["Id"]: s for s in lean.containers(all=True)}
        theirs = {s["Id"]: s for s in api.containers(all=True)}
        assert ours == theirs and {c.id for c in made} <= set(ours)
        assert lean.connections == 1, "one kept-alive connection for every read"
    finally:
        lean.close()


def test_large_chunked_lists_are_read_whole(
    dockerd: PrivateDockerd, docker_client: docker.DockerClient, make_container: Any
) -> None:
    labels = {f"dockmon-test.pad{i}": "x" * 4000 for i in range(16)}
    made = [make_container(["true"], labels=labels, start=False) for _ in range(8)]
    lean = _lean(dockerd)
    try:
        raw = lean.get("/containers/json", "all=1")
        assert lean.last_framing == "chunked" and len(raw) > 8 * 16 * 4000
        ids = {s["Id"] for s in loads(raw)}
        assert {c.id for c in made} <= ids
        assert loads(raw) == docker_client.api.containers(all=True)
    finally:
        lean.close()


def test_missing_container_gets_dockers_wording_exactly_as_docker_py(
    dockerd: PrivateDockerd, docker_client: docker.DockerClient
) -> None:
    lean = _lean(dockerd)
    try:
        with pytest.raises(docker.errors.NotFound) as ours:
            lean.inspect_container_raw("doesnotexist0")
    finally:
        lean.close()
    with pytest.raises(docker.errors.NotFound) as theirs:
        docker_client.api.inspect_container("doesnotexist0")
    host = dockerd.base_url
    assert describe_docker_error("inspect container", ours.value, host) == describe_docker_error(
        "inspect container", theirs.value, host
    )
    assert "No such container: doesnotexist0" in str(ours.value.explanation)


def test_the_pinned_api_version_is_the_one_spoken(dockerd: PrivateDockerd) -> None:
    """DOCKER_API_VERSION reaches the daemon: one it does not speak is Docker's error."""
    lean = _lean(dockerd, api_version="9.99")
    try:
        with pytest.raises(docker.errors.APIError) as new:
            lean.containers(all=True)
    finally:
        lean.close()
    assert "client version 9.99 is too new" in str(new.value.explanation)


def test_a_missing_or_dead_socket_is_worded_and_diagnosed_as_with_docker_py(
    tmp_path: Path,
) -> None:
    missing = f"unix://{tmp_path}/missing.sock"
    dead_path = tmp_path / "dead.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(dead_path))
    dead.close()  # a socket file nobody listens on: connection refused
    for host in (missing, f"unix://{dead_path}"):
        address = lean_address(host)
        assert address is not None
        with pytest.raises(requests.exceptions.ConnectionError) as ours:
            LeanDocker(address, timeout=5).inspect_container_raw("x")
        with pytest.raises((docker.errors.DockerException, requests.RequestException)) as theirs:
            docker.APIClient(base_url=host, version="1.41", timeout=5).inspect_container("x")
        assert describe_docker_error("inspect container", ours.value, host) == (
            describe_docker_error("inspect container", theirs.value, host)
        )
        problem, expected = diagnose(host, ours.value), diagnose(host, theirs.value)
        assert problem is not None and expected is not None
        assert (problem.kind, problem.text()) == (expected.kind, expected.text())


def test_permission_denied_on_the_real_socket_is_worded_as_today(
    dockerd: PrivateDockerd,
) -> None:
    """As uid 65534 (a forked child: the interpreter may not be readable by that user)."""
    socket_file = dockerd.base_url.removeprefix("unix://")
    mode = os.stat(socket_file).st_mode & 0o777
    if mode & 0o006:
        pytest.skip(f"the daemon's socket is open to everyone ({mode:o})")
    address = lean_address(dockerd.base_url)
    assert address is not None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, try, report, exit at once
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                LeanDocker(address, timeout=5).inspect_container_raw("x")
                text = "no error"
            except Exception as exc:
                text = describe_docker_error("inspect container", exc, dockerd.base_url)[0]
            os.write(write_end, text.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        text = pipe.read().decode()
    os.waitpid(pid, 0)
    assert text == (
        "failed to inspect container: permission denied while trying to connect to the Docker "
        f"daemon socket at {dockerd.base_url} (add the agent's user to the socket's group)"
    )


def test_a_daemon_restart_mid_connection_reopens_the_kept_connection(
    dockerd: PrivateDockerd, make_container: Any
) -> None:
    c = make_container(["sleep", "3600"])
    lean = _lean(dockerd)
    try:
        assert loads(lean.inspect_container_raw(c.id))["Id"] == c.id
        dockerd.restart()  # the kept-alive connection is now closed by the old daemon
        assert loads(lean.inspect_container_raw(c.id))["Id"] == c.id
        assert lean.connections == 2
    finally:
        lean.close()


# --- through the agent: the hub sees what docker-py would have given ------------------------------


def test_the_agent_answers_inspect_and_list_from_the_lean_path_as_docker_py_would(
    tmp_path: Path,
    dockerd: PrivateDockerd,
    docker_client: docker.DockerClient,
    make_container: Any,
) -> None:
    c = make_container(["sleep", "3600"], labels={"dockmon-test.note": "<b>&\u2028"})
    with running_agent(tmp_path / "data", dockerd.base_url, DOCKER_API_VERSION="1.41") as agent:
        agent.hub.wait_registered()
        inspected = agent.hub.container_op("inspect", c.id[:12])
        assert inspected.ok, inspected.error
        assert inspected.data["container"] == docker_client.api.inspect_container(c.id)
        missing = agent.hub.container_op("inspect", "doesnotexist0")
        assert missing.error == (
            "failed to inspect container: Error response from daemon: No such container: "
            "doesnotexist0"
        )
        listed = agent.hub.command("list_containers")
        assert listed.ok, listed.error
        ours = {s["Id"]: s for s in listed.data}
        info = docker_client.api.inspect_container(c.id)
        for summary in docker_client.api.containers(all=True):
            got = ours[summary["Id"]]
            extra = {k: got.pop(k) for k in ("RepoDigests", "StartedAt", "Env") if k in got}
            got.pop("Status"), summary.pop("Status")  # "Up 2 seconds": a clock, not data
            assert got == summary
            if summary["Id"] == c.id:
                assert extra["StartedAt"] == info["State"]["StartedAt"]
                assert extra["Env"] == dict(e.split("=", 1) for e in info["Config"]["Env"])
                assert extra["RepoDigests"] == []
        agent.hub.assert_clean()


# --- the event stream ---------------------------------------------------------------------------


def _chunked_events(pieces: list[bytes]) -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    return head + b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"


def test_events_cut_anywhere_by_chunks_come_out_whole_and_in_order(tmp_path: Path) -> None:
    events = [{"Type": "container", "Action": f"a{i}", "pad": "x" * (i * 37)} for i in range(30)]
    lines = [json.dumps(e).encode() + b"\n" for e in events]
    lines.insert(3, b"\n")  # a blank line between events is no event
    text = b"".join(lines)
    pieces = [text[i : i + 101] for i in range(0, len(text), 101)]  # mid-object cuts

    def script(conn: socket.socket, _n: int) -> None:
        conn.sendall(_chunked_events(pieces))

    with scripted(tmp_path, script) as (path, _):
        lean = LeanDocker(("unix", path), timeout=5)
        try:
            assert list(lean.events(since=5, filters={"type": ["container"]})) == events
        finally:
            lean.close()


def test_an_event_stream_to_the_end_of_the_connection_is_read_too(tmp_path: Path) -> None:
    def script(conn: socket.socket, _n: int) -> None:
        conn.sendall(b'HTTP/1.0 200 OK\r\n\r\n{"Action":"start"}\n{"Action":"die"}\n')
        conn.shutdown(socket.SHUT_WR)

    with scripted(tmp_path, script) as (path, _):
        lean = LeanDocker(("unix", path), timeout=5)
        try:
            assert [e["Action"] for e in lean.events(since=0, filters={})] == ["start", "die"]
        finally:
            lean.close()


def test_a_broken_event_line_is_a_connection_error_not_a_crash(tmp_path: Path) -> None:
    def script(conn: socket.socket, _n: int) -> None:
        conn.sendall(_chunked_events([b'{"Action":"start"}\n{"Action": tru\n']))

    with scripted(tmp_path, script) as (path, _):
        lean = LeanDocker(("unix", path), timeout=5)
        stream = iter(lean.events(since=0, filters={}))
        assert next(stream) == {"Action": "start"}
        with pytest.raises(requests.exceptions.ConnectionError, match="Connection aborted"):
            next(stream)
        lean.close()


def _watch(stream: Any, seen: list[dict[str, Any]], until: str) -> threading.Thread:
    def read() -> None:
        for event in stream:
            seen.append(event)
            if event.get("Action") == until:
                return

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_the_event_stream_equals_docker_pys_on_the_real_daemon(
    dockerd: PrivateDockerd, docker_client: docker.DockerClient, busybox_image: str
) -> None:
    """Both subscribed from the same second, through a container's whole life: the same
    objects, in the same order."""
    since = int(time.time()) - 1
    token = uuid.uuid4().hex  # this test's container alone
    label = {"org.dockmon.test.events": token}
    filters = {"type": ["container"], "label": [f"org.dockmon.test.events={token}"]}
    lean = _lean(dockerd)
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    theirs_stream = docker_client.api.events(since=since, filters=filters, decode=True)
    readers = [
        _watch(lean.events(since=since, filters=filters), ours, "destroy"),
        _watch(theirs_stream, theirs, "destroy"),
    ]
    try:
        c = docker_client.containers.create(
            busybox_image, ["true"], network_mode="none", labels=label
        )
        c.start()
        c.wait(timeout=30)
        c.remove()
        for reader in readers:
            reader.join(30)
            assert not reader.is_alive(), "no destroy event within 30 s"
        assert [e["Action"] for e in ours] == ["create", "start", "die", "destroy"]
        assert ours == theirs
    finally:
        theirs_stream.close()
        lean.close()


def test_closing_the_event_stream_ends_a_read_blocked_between_events(
    dockerd: PrivateDockerd,
) -> None:
    lean = _lean(dockerd)
    stream = lean.events(since=int(time.time()), filters={"type": ["container"]})
    ended = threading.Event()

    def read() -> None:
        with contextlib.suppress(requests.exceptions.ConnectionError):
            for _ in stream:
                pass
        ended.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert not ended.wait(0.3)  # blocked: no event comes
        stream.close()
        assert ended.wait(5), "close() did not end the blocked read"
    finally:
        lean.close()


def test_an_event_subscription_the_daemon_refuses_is_dockers_error_as_docker_py_raises_it(
    dockerd: PrivateDockerd,
) -> None:
    """An API version the daemon no longer speaks (docker-py refuses to ask with one): the
    daemon's 400 and message as the ``APIError`` docker-py raises for an error status."""
    with pytest.raises(docker.errors.APIError) as ours:
        _lean(dockerd, api_version="1.10").events(since=0, filters={"type": ["container"]})
    assert type(ours.value) is docker.errors.APIError and str(ours.value).startswith("400 ")
    assert "client version 1.10 is too old" in str(ours.value.explanation)
