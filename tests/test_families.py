"""The one registry of command families (messages/families.py) and the gateway's handlers.

Adding a family is one module plus one line in ``FAMILIES``; these tests catch a family whose
commands have no route, two routes, a route nothing decodes, or a gateway command without a
handler (or a handler for a command the gateway is never sent).
"""

from __future__ import annotations

import types
import typing
from collections import Counter
from typing import Any

import pytest

from actors.commands.registry import HANDLERS, MODULES, FamilyCommand
from messages import families
from messages.docker import ACTION_NAMES, CommandFailed, ContainerOpFailed, ListContainers
from messages.families import (
    CONTAINER_COMMANDS,
    FAMILIES,
    FRAME_DECODERS,
    GENERIC_DECODERS,
    ROUTES,
)
from messages.roles import Role

REPLIES = (CommandFailed, ContainerOpFailed, type(None))  # what a decoder gives besides a command


def decoded_types(decoder: Any) -> set[type]:
    """The command types a decoder can produce, from its return annotation."""
    result = typing.get_type_hints(decoder)["return"]
    kinds = set(typing.get_args(result)) if isinstance(result, types.UnionType) else {result}
    return {k for k in kinds if k not in REPLIES}


def every_decodable_command() -> set[type]:
    decoders = [*GENERIC_DECODERS.values(), *FRAME_DECODERS.values()]
    commands = {kind for decoder in decoders for kind in decoded_types(decoder)}
    return commands | set(ACTION_NAMES)  # container_operation frames, decoded by messages.wire


def test_every_decodable_command_has_exactly_one_route_and_every_route_is_decodable() -> None:
    decodable = every_decodable_command()
    assert decodable - set(ROUTES) == set(), "decoded but routed nowhere"
    assert set(ROUTES) - decodable == set(), "routed but never decoded"
    claims = Counter(kind for family in FAMILIES for kind in family.ROUTES)
    claims.update(CONTAINER_COMMANDS)
    assert [kind.__name__ for kind, n in claims.items() if n != 1] == []


def test_every_command_routed_to_the_gateway_has_exactly_one_handler() -> None:
    to_gateway = {kind for kind, role in ROUTES.items() if role is Role.DOCKER_GATEWAY}
    built_in = set(ACTION_NAMES) | {ListContainers}  # the gateway runs these itself
    assert set(CONTAINER_COMMANDS) == built_in
    assert to_gateway - built_in == set(HANDLERS), (
        "a gateway command without a handler, or a stale one"
    )
    assert set(typing.get_args(FamilyCommand)) == set(HANDLERS)  # its Inbox names exactly them
    handlers = Counter(kind for module in MODULES for kind in module.HANDLERS)
    assert [kind.__name__ for kind, n in handlers.items() if n != 1] == []


def test_a_name_two_families_claim_fails_at_import() -> None:
    with pytest.raises(ImportError, match="command 'x' is claimed by a and b"):
        families._merged("command", [("a", {"x": 1}), ("b", {"x": 2})])
