"""Each actor's ``Inbox``: the messages it accepts, dispatched exhaustively (STYLE §4).

mypy proves the dispatch covers the Inbox (``case _: assert_never(message)``); these tests show
that a message outside it is still what it always was: one warning naming it, nothing else, and
the actor goes on.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
import pkgutil
import types
import typing
from pathlib import Path
from typing import Any

import pytest

import actors
from actors.base import Peers, SupervisedActor
from actors.status import StatusReporterActor
from messages.common import Ping, Pong
from tests.support.fakes import FakeClock, FakeScheduler, make_ctx

#: the name each actor gives itself in its "... ignored <message>" warning (unchanged)
IGNORED_AS = {
    "connection": "Connection",
    "deployer": "Deployer",
    "docker_gateway": "DockerGateway",
    "event_streamer": "EventStreamer",
    "health_checks": "HealthChecks",
    "shell": "ShellActor",
    "stats": "StatsActor",
    "status": "StatusReporter",
    "token_store": "TokenStore",
    "updater": "Updater",
}


class Stray:
    """A message no actor accepts (a routing mistake)."""


def actor_modules() -> dict[str, types.ModuleType]:
    names = [m.name for m in pkgutil.iter_modules(actors.__path__) if not m.ispkg]
    return {
        name: importlib.import_module(f"actors.{name}")
        for name in names
        if name not in ("base", "errors")
    }


def actor_class(module: types.ModuleType) -> type[SupervisedActor]:
    (cls,) = [
        c
        for _, c in inspect.getmembers(module, inspect.isclass)
        if issubclass(c, SupervisedActor) and c.__module__ == module.__name__
    ]
    return cls


def test_every_actor_at_the_top_of_actors_declares_its_inbox() -> None:
    modules = actor_modules()
    assert set(modules) == set(IGNORED_AS)
    for name, module in modules.items():
        inbox = module.Inbox
        members = typing.get_args(inbox) if isinstance(inbox, types.UnionType) else (inbox,)
        assert len(members) >= 2, name
        assert all(m.__module__.startswith("messages.") for m in members), name


def _matched_classes(module: types.ModuleType) -> set[str]:
    """The class names the ``match`` of the actor's ``handle`` dispatches on."""
    tree = ast.parse(inspect.getsource(module))
    (handle,) = [
        node
        for cls in tree.body
        if isinstance(cls, ast.ClassDef)
        for node in cls.body
        if isinstance(node, ast.FunctionDef) and node.name == "handle"
    ]
    return {
        pattern.cls.id
        for match in ast.walk(handle)
        if isinstance(match, ast.Match)
        for case in match.cases
        for pattern in ast.walk(case.pattern)
        if isinstance(pattern, ast.MatchClass) and isinstance(pattern.cls, ast.Name)
    }


@pytest.mark.parametrize("name", sorted(IGNORED_AS))
def test_every_message_the_dispatch_handles_is_in_the_inbox(name: str) -> None:
    """A case for a type left out of the Inbox is dead code: the guard before the match drops
    that message with a warning (mypy does not see it, since the case narrows to Never)."""
    module = actor_modules()[name]
    members = {m.__name__ for m in typing.get_args(module.Inbox)}
    assert _matched_classes(module) <= members, _matched_classes(module) - members


@pytest.mark.parametrize("name", sorted(IGNORED_AS))
def test_a_message_outside_the_inbox_is_logged_and_dropped_as_before(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    module = actor_modules()[name]
    actor = object.__new__(actor_class(module))  # nothing of the actor is touched for it
    caplog.set_level(logging.WARNING, logger=module.__name__)
    assert actor.handle(Stray()) is None
    assert [r.getMessage() for r in caplog.records] == [f"{IGNORED_AS[name]} ignored Stray"]


def test_a_running_actor_told_a_stray_message_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="actors.status")
    clock = FakeClock()
    ref = StatusReporterActor.start(
        make_ctx(Peers(), FakeScheduler(clock), clock, child_id="status"),
        data_path=str(tmp_path),
        version="test",
    )
    try:
        ref.tell(Stray())
        reply: Any = ref.ask(Ping(), timeout=5)  # FIFO: the stray message was handled first
        assert isinstance(reply, Pong)
        assert "StatusReporter ignored Stray" in caplog.text
    finally:
        ref.stop()
