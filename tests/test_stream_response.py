"""The stats streams' HTTP response reader (actors/telemetry/stream_loop.Response): pure logic,
fed the bytes a daemon sends in every split, and the loop over a socket the test answers."""

from __future__ import annotations

import json
import queue
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.telemetry.stream_loop import (
    MAX_LINE,
    DockerHttpError,
    Response,
    StreamLoop,
    request_bytes,
)

SAMPLES = [{"read": "2026-12-04T02:00:00Z", "n": n, "name": "/web"} for n in range(3)]
BODY = b"".join(json.dumps(s).encode() + b"\n" for s in SAMPLES)


def chunked(body: bytes, size: int) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    framed = b"".join(b"%x;ext=1\r\n" % len(p) + p + b"\r\n" for p in parts)
    return framed + b"0\r\n\r\n"


def head(status: str = "200 OK", *headers: str) -> bytes:
    return ("HTTP/1.1 " + status + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode()


def read(response: Response, data: bytes, step: int, *, eof: bool = False) -> list[Any]:
    values: list[Any] = []
    for i in range(0, len(data), step):
        values += response.feed(data[i : i + step])
    if eof:
        values += response.eof()
    return values


@pytest.mark.parametrize("step", [1, 7, 100, 100_000])
@pytest.mark.parametrize("chunk", [5, 64, 10_000])
def test_a_chunked_body_gives_each_line_in_any_split(step: int, chunk: int) -> None:
    response = Response()
    data = head("200 OK", "Content-Type: application/json", "Transfer-Encoding: chunked")
    assert read(response, data + chunked(BODY, chunk), step) == SAMPLES
    assert response.done and response.status == 200


@pytest.mark.parametrize("step", [1, 13, 100_000])
def test_a_sized_body_ends_at_its_length_and_one_to_eof_at_the_close(step: int) -> None:
    sized = Response()
    data = head("200 OK", f"Content-Length: {len(BODY)}") + BODY + b"ignored"
    assert read(sized, data, step) == SAMPLES
    assert sized.done
    unframed = Response()
    last = json.dumps(SAMPLES[-1]).encode()  # no newline before the close
    values = read(unframed, head() + BODY[: -len(last) - 1] + last, step)
    assert values == SAMPLES[:-1] and not unframed.done
    assert unframed.eof() == SAMPLES[-1:] and unframed.done


def test_an_error_status_raises_with_dockers_message() -> None:
    body = b'{"message":"No such container: abc"}'
    response = Response()
    with pytest.raises(DockerHttpError, match=r"^HTTP 404: No such container: abc$") as caught:
        read(response, head("404 Not Found", "Transfer-Encoding: chunked") + chunked(body, 9), 4)
    assert caught.value.status == 404
    plain = Response()
    plain.feed(head("500 Internal Server Error") + b"daemon says no")
    with pytest.raises(DockerHttpError, match=r"^HTTP 500: daemon says no$"):
        plain.eof()
    endless = Response()  # an error body that never ends: its first 4 KiB are enough
    with pytest.raises(DockerHttpError, match=r"^HTTP 500: x{200}$"):
        read(endless, head("500 Oops") + b"x" * 10_000, 1000)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "bad HTTP status line b'SSH-2.0-OpenSSH'"),
        (b"HTTP/1.1 0 Zero\r\n\r\n", "bad HTTP status line"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * MAX_LINE, "HTTP response head too long"),
        (head("200 OK", "Transfer-Encoding: chunked") + b"z" * 2000, "bad chunk size line"),
        (head() + b"{" * (MAX_LINE + 1), "stats line too long"),
    ],
)
def test_what_is_not_a_stats_response_is_refused(data: bytes, error: str) -> None:
    with pytest.raises(ConnectionError, match=error.replace("(", r"\(")):
        read(Response(), data, 65536)


def test_a_close_before_the_head_is_in_says_so() -> None:
    response = Response()
    response.feed(b"HTTP/1.1 2")
    with pytest.raises(ConnectionError, match=r"bad HTTP status line b'HTTP/1.1 2'"):
        response.eof()


def test_a_chunk_size_that_is_not_hex_is_refused() -> None:
    with pytest.raises(ValueError):
        Response().feed(head("200 OK", "Transfer-Encoding: chunked") + b"zz\r\n")


# --- the loop over a real socket ----------------------------------------------------------------


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "docker.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    with server:
        yield f"unix://{path}", server


def test_the_loop_streams_samples_then_reports_the_end_and_a_missing_container(
    daemon: tuple[str, socket.socket],
) -> None:
    host, server = daemon
    got: queue.Queue[tuple[str, ...]] = queue.Queue()
    loop = StreamLoop(
        host,
        on_sample=lambda cid, token, sample: got.put(("sample", cid, str(token), sample["n"])),
        on_ended=lambda cid, token, reason, gone: got.put(("ended", cid, reason, str(gone))),
    )
    loop.start()
    try:
        loop.open("c1", 1)
        peer, _ = server.accept()
        with peer:
            request = peer.recv(4096)
            assert request == request_bytes("/containers/c1/stats?stream=1")
            peer.sendall(head("200 OK", "Transfer-Encoding: chunked") + chunked(BODY, 30)[:-5])
            assert [got.get(timeout=5) for _ in SAMPLES] == [
                ("sample", "c1", "1", n) for n in range(3)
            ]
            peer.sendall(b"0\r\n\r\n")
            assert got.get(timeout=5) == ("ended", "c1", "stream ended", "False")
        loop.open("gone", 2)
        peer, _ = server.accept()
        with peer:
            peer.recv(4096)
            peer.sendall(head("404 Not Found") + b'{"message":"No such container: gone"}')
        assert got.get(timeout=5) == (
            "ended",
            "gone",
            "DockerHttpError: HTTP 404: No such container: gone",
            "True",
        )
        loop.open("quiet", 3)  # closed by the actor: no word back
        peer, _ = server.accept()
        with peer:
            peer.settimeout(5)
            assert peer.recv(4096).startswith(b"GET ")
            loop.close("quiet")
            assert peer.recv(4096) == b""  # the loop closed its end
        assert got.empty()
    finally:
        loop.stop()
    assert not loop._thread.is_alive()


def test_a_daemon_that_is_not_there_ends_the_stream_with_why(tmp_path: Path) -> None:
    ended = threading.Event()
    reasons: list[str] = []

    def on_ended(cid: str, token: int, reason: str, gone: bool) -> None:
        reasons.append(reason)
        ended.set()

    loop = StreamLoop(f"unix://{tmp_path}/none.sock", on_sample=lambda *_: None, on_ended=on_ended)
    loop.start()
    try:
        loop.open("c1", 1)
        assert ended.wait(5)
        assert reasons == ["FileNotFoundError: [Errno 2] No such file or directory"]
    finally:
        loop.stop()
