"""Helpers for strict payload decoding, shared by every command family's decoders."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from messages.docker import CommandFailed


class BadPayload(Exception):
    """A payload field has the wrong type or value; the message goes back to the backend."""


def number(payload: Mapping[str, Any], key: str, default: int) -> int:
    value = payload.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadPayload(f"{key} must be a number, got {type(value).__name__}")
    if value < 0:
        raise BadPayload(f"{key} must not be negative")
    return int(value)


def boolean(payload: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = payload.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadPayload(f"{key} must be a boolean, got {type(value).__name__}")
    return value


def string(payload: Mapping[str, Any], key: str, default: str = "", *, required: str = "") -> str:
    """``required`` is the error message used when the value is missing or empty."""
    value = payload.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, str):
        raise BadPayload(f"{key} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise BadPayload(required)
    return value


def obj(payload: Any, what: str) -> Mapping[str, Any]:
    """A missing or null payload is an empty object; anything else must be an object."""
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise BadPayload(f"{what} payload must be an object, got {type(payload).__name__}")
    return payload


#: A generic-command decoder: (request_id, payload or None) -> typed command or failure reply.
#: Raise BadPayload for bad input; it becomes ``CommandFailed`` with that message.
CommandDecoder = Callable[[str, Any], Any]


def command_failed(request_id: str, command: str, exc: BadPayload) -> CommandFailed:
    message = str(exc)
    return CommandFailed(request_id=request_id, error=f"invalid payload for {command}: {message}")
