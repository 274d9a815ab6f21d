"""The roles actors play: the names the supervisor starts them under and peers reach them by.

A :class:`Role` is a :class:`~enum.StrEnum`, so log lines and dead letters keep the plain words
(``dead letter: Ping for connection``). It lives in ``messages/`` because route tables here name
the role that runs each command, and messages never import actors.
"""

from __future__ import annotations

from enum import StrEnum

from messages.records import record


class Role(StrEnum):
    TOKEN_STORE = "token_store"
    STATUS = "status"
    DOCKER_GATEWAY = "docker_gateway"
    CONNECTION = "connection"
    EVENT_STREAMER = "event_streamer"
    UPDATER = "updater"
    DEPLOYER = "deployer"
    STATS = "stats"
    SHELL = "shell"
    HEALTH_CHECKS = "health_checks"


@record
class Subscriber:
    """A role an actor tells every item of a fan-out (the composition root lists them).

    ``optional``: the role may legitimately not run, so a message it misses is no dead letter.
    ``actions``: the event actions it wants (None: all of them), for an event fan-out.
    """

    role: Role
    optional: bool = False
    actions: frozenset[str] | None = None
