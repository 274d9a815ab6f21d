"""The audit bookkeeping of requests (actors/session/audit.py): the pending request table, the
duplicate id refusal (issue 10.4), and the line each request and reply gets. No threads, no I/O."""

from __future__ import annotations

import json
from typing import Any

from actors.session.audit import AuditBook, AuditLine
from messages.common import RawJson
from messages.docker import CommandFailed, CommandSucceeded, ContainerOpSucceeded
from messages.wire import Request, decode_envelope


def request(frame: dict[str, Any]) -> Request:
    decoded = decode_envelope(json.dumps(frame))
    assert isinstance(decoded, Request)
    return decoded


def stop(rid: str = "q1", container: str = "web") -> Request:
    return request({"type": "container_operation", "correlation_id": rid,
                    "payload": {"action": "stop", "container_id": container}})  # fmt: skip


def images(rid: str = "c1") -> Request:
    return request({"type": "command", "command": "list_images", "id": rid, "payload": {}})


SHELL_DATA = {"type": "shell_session", "payload": {"action": "data", "session_id": "s", "data": ""}}
HEALTH_SYNC = {"type": "health_check_configs_sync", "payload": {"configs": []}}


def test_a_request_with_an_id_is_recorded_when_its_reply_goes_out() -> None:
    book = AuditBook()
    assert book.accepted(stop()) is None and book.pending == 1
    ok = ContainerOpSucceeded(request_id="q1", body=RawJson('{"container_id":"web"}'))
    assert book.answered(ok) == AuditLine("stop", "web", "ok")
    assert book.pending == 0 and book.answered(ok) is None  # once
    book.accepted(images())
    failed = CommandFailed(request_id="c1", error="boom")
    assert book.answered(failed) == AuditLine("list_images", None, "error: boom")


def test_a_reply_to_no_pending_request_gets_no_line() -> None:
    book = AuditBook()
    assert book.answered(CommandSucceeded(request_id="x", payload=RawJson("[]"))) is None


def test_a_request_without_id_is_recorded_at_once_and_keystrokes_never() -> None:
    book = AuditBook()
    assert book.accepted(request(HEALTH_SYNC)) == AuditLine(
        "health_check_configs_sync", None, "accepted"
    )
    keys = request(SHELL_DATA)
    assert book.accepted(keys) is None and book.denied(keys, "no") is None
    assert book.rejected(keys, "no") is None and book.pending == 0


def test_refusals_are_recorded_with_their_reason() -> None:
    book = AuditBook()
    assert book.denied(stop(), "denied by the agent's policy: x") == AuditLine(
        "stop", "web", "denied: denied by the agent's policy: x"
    )
    assert book.rejected(images(), "unknown command: x") == AuditLine(
        "list_images", None, "rejected: unknown command: x"
    )
    assert book.pending == 0  # refused requests wait for nothing


def test_a_second_request_under_a_pending_id_is_a_duplicate_until_the_first_is_answered() -> None:
    book = AuditBook()
    assert book.duplicate(stop()) is None
    book.accepted(stop())
    assert book.duplicate(stop(container="db")) == (
        "duplicate request id q1: a stop request with this id is still pending"
    )
    assert book.duplicate(images("q1")) is not None  # the id counts, whatever the request
    assert book.duplicate(images("c1")) is None
    assert book.duplicate(request(HEALTH_SYNC)) is None  # no id: never a duplicate
    book.answered(CommandFailed(request_id="q1", error="x"))
    assert book.duplicate(stop()) is None


def test_the_pending_table_is_bounded_and_forgets_the_oldest() -> None:
    book = AuditBook(limit=3)
    for n in range(5):
        book.accepted(stop(f"q{n}"))
    assert book.pending == 3
    assert book.duplicate(stop("q0")) is None and book.duplicate(stop("q1")) is None
    assert book.duplicate(stop("q2")) is not None and book.duplicate(stop("q4")) is not None
