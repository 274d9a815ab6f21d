"""Shell sessions: ``shell_session`` frames (PROTOCOL §4.4) and ``shell_data`` events (§5.8).

The backend bridges a browser terminal through ``{"type":"shell_session","payload":{…}}`` frames
that carry no request id and get no reply; the agent answers asynchronously with ``shell_data``
events. Malformed frames are logged and ignored (§11); shell input is never logged (§12).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any

from messages.decoding import CommandDecoder
from messages.records import record
from messages.references import ContainerRef, SessionRef
from messages.roles import Role

log = logging.getLogger(__name__)

#: ``shell_data`` chunks carry at most this many output bytes (before base64)
OUTPUT_CHUNK = 4096


@record(kw_only=True)
class StartShell:
    """``start``: open an interactive TTY exec in ``container_id`` (ignored if the id is in use)."""

    session_id: SessionRef
    container_id: ContainerRef


@record(kw_only=True)
class ShellInput:
    """``data``: bytes for the session's stdin, already base64-decoded. Never logged."""

    session_id: SessionRef
    data: bytes = field(repr=False)


@record(kw_only=True)
class ResizeShell:
    """``resize``: both dimensions in 1..65535 (other resizes are dropped by the decoder)."""

    session_id: SessionRef
    cols: int
    rows: int


@record(kw_only=True)
class CloseShell:
    """``close``: close the exec stream and forget the session."""

    session_id: SessionRef


@record(kw_only=True)
class ShellEnded:
    """ShellActor-internal: the output of session ``serial`` ended (exit, close or failure)."""

    session_id: str
    serial: int


ShellCommand = StartShell | ShellInput | ResizeShell | CloseShell


def _ignore(reason: str, session_id: object = None) -> ShellCommand | None:
    """Log why a frame is dropped (never its data); always None."""
    if isinstance(session_id, str):
        log.info("ignored a shell_session frame for session %s: %s", session_id[:64], reason)
    else:
        log.info("ignored a shell_session frame: %s", reason)
    return None


def _dimension(payload: Mapping[str, Any], key: str) -> int | None:
    value = payload.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 0xFFFF:
        return None
    return value


def decode_shell_session(frame: Mapping[str, Any]) -> ShellCommand | None:
    """One ``shell_session`` frame -> typed command, or None (logged; the frame is ignored)."""
    payload = frame.get("payload")
    if not isinstance(payload, dict):
        return _ignore("payload is not an object")
    action = payload.get("action")
    session_id = payload.get("session_id")
    if not isinstance(action, str):
        return _ignore("action must be a string", session_id)
    if not isinstance(session_id, str) or not session_id:
        return _ignore(f"{action}: session_id must be a non-empty string")
    match action:
        case "start":
            container_id = payload.get("container_id")
            if not isinstance(container_id, str) or not container_id.strip():
                return _ignore("start: container_id must be a non-empty string", session_id)
            return StartShell(session_id=session_id, container_id=container_id.strip())
        case "data":
            text = payload.get("data")
            if not isinstance(text, str):
                return _ignore("data: data must be a base64 string", session_id)
            try:
                data = base64.b64decode(text.encode("ascii"), validate=True)
            except (UnicodeEncodeError, binascii.Error):
                return _ignore("data: not padded standard base64", session_id)
            return ShellInput(session_id=session_id, data=data)
        case "resize":
            cols, rows = _dimension(payload, "cols"), _dimension(payload, "rows")
            if cols is None or rows is None:
                return _ignore("resize: cols and rows must be integers in 1..65535", session_id)
            return ResizeShell(session_id=session_id, cols=cols, rows=rows)
        case "close":
            return CloseShell(session_id=session_id)
        case _:
            return _ignore(f"unknown action {action[:40]!r}", session_id)


def shell_data(
    session_id: str, action: str, *, data: bytes | None = None, error: str | None = None
) -> dict[str, str]:
    """A ``shell_data`` payload (§5.8): ``data`` only for ``data``, ``error`` only for ``error``."""
    payload = {"session_id": session_id, "action": action}
    if action == "data":
        payload["data"] = base64.b64encode(data or b"").decode("ascii")
    elif action == "error":
        payload["error"] = error or "shell session failed"
    return payload


#: generic ``command`` names this family decodes
GENERIC_DECODERS: dict[str, CommandDecoder] = {}
#: top-level frame ``type``s this family decodes (frame -> typed message or None to ignore)
FRAME_DECODERS: dict[str, Callable[[Mapping[str, Any]], ShellCommand | None]] = {
    "shell_session": decode_shell_session,
}
#: which actor role runs each command type
ROUTES: dict[type, Role] = {
    StartShell: Role.SHELL,
    ShellInput: Role.SHELL,
    ResizeShell: Role.SHELL,
    CloseShell: Role.SHELL,
}
