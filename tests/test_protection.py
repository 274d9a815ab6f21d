"""Issue 10.2 and 10.3: protected containers are protected on every route that can change one,
and the check and the action can never be split by a rename.

What can change a container is declared once (``actors.rules.policy.CHANGES`` and
``CHANGES_NOTHING``); these tests prove that every routed command type is declared and that the
guard resolves and refuses what each one reaches; tests/test_protection_e2e.py proves every
declared route on the real daemon and that the action runs on the id the guard checked.
"""

from __future__ import annotations

from typing import Any

import docker
import docker.errors
import pytest

from actors.rules.policy import (
    CHANGES,
    CHANGES_NOTHING,
    CONTAINER_CHANGES,
    Guard,
    Policy,
    Refused,
    Target,
)
from messages.docker import (
    ACTION_NAMES,
    KillContainer,
    RemoveContainer,
    StartContainer,
    StopContainer,
)
from messages.families import ROUTES
from messages.networks import DeleteNetwork
from messages.shell import StartShell
from messages.updates import SelfUpdate, UpdateContainer
from tests.test_protection_e2e import REFUSALS

GRACEFUL = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
POLICY = "  protected_containers:\n    names: ['keep-*']\n    labels: ['tier=prod']\n"
PROTECTED = Policy(protected_names=("keep-*",), protected_labels=(("tier", "prod"),))


# --- one declaration for every routed command type ---------------------------------------------


def test_every_routed_command_type_declares_whether_it_can_change_a_container() -> None:
    assert not set(CHANGES) & set(CHANGES_NOTHING)
    undeclared = set(ROUTES) - set(CHANGES) - set(CHANGES_NOTHING)
    assert not undeclared, (
        "declare in actors/rules/policy.py whether these commands can change a container (CHANGES, "
        "with a resolver) or not (CHANGES_NOTHING, with why): "
        f"{sorted(c.__name__ for c in undeclared)}"
    )
    assert set(CHANGES) | set(CHANGES_NOTHING) <= set(ROUTES)  # nothing stale


def test_the_configurations_container_changes_are_the_declared_ones() -> None:
    """actors/rules/permissions.py spells CONTAINER_CHANGES out (so the configuration loads no
    message type): it must be exactly the operations CHANGES declares."""
    assert frozenset(spec.operation for spec in CHANGES.values()) == CONTAINER_CHANGES


def test_container_actions_keep_their_protocol_names() -> None:
    for kind, spec in CHANGES.items():
        if kind in ACTION_NAMES:
            assert spec.operation == ACTION_NAMES[kind]


# --- the guard's decisions, without Docker -------------------------------------------------------


class FakeDocker:
    """``inspect_container`` / ``containers`` / ``inspect_network`` over a fixed table."""

    def __init__(self, *containers: dict[str, Any], net: dict[str, Any] | None = None) -> None:
        self.by_ref = {}
        for c in containers:
            self.by_ref[c["Id"]] = self.by_ref[c["Id"][:12]] = self.by_ref[c["Name"][1:]] = c
        self.net = net

    def inspect_container(self, ref: str) -> dict[str, Any]:
        if ref not in self.by_ref:
            raise docker.errors.NotFound(f"No such container: {ref}")
        return self.by_ref[ref]

    def containers(self, all: bool = False) -> list[dict[str, Any]]:
        seen = {id(c): c for c in self.by_ref.values()}.values()
        return [
            {"Id": c["Id"], "Names": [c["Name"]], "Labels": c["Config"]["Labels"],
             "HostConfig": {"NetworkMode": c["HostConfig"]["NetworkMode"]}}
            for c in seen
        ]  # fmt: skip

    def inspect_network(self, ref: str) -> dict[str, Any]:
        assert self.net is not None
        return self.net


def container(name: str, n: int, mode: str = "none", **labels: str) -> dict[str, Any]:
    return {
        "Id": f"{n:x}" * 64,
        "Name": f"/{name}",
        "Config": {"Labels": labels},
        "HostConfig": {"NetworkMode": mode},
    }


def test_the_guard_resolves_to_full_ids_and_refuses_what_it_reaches() -> None:
    web, db = container("web", 1), container("keep-db", 2)
    side = container("side", 3, mode="container:web", tier="prod")
    api = FakeDocker(web, db, side, net={"Name": "backend", "Containers": {db["Id"]: {}}})
    guard = Guard(PROTECTED)
    resolved = guard.check(api, StopContainer(request_id="r", container_id="web"))
    assert resolved is not None and resolved.container_id == web["Id"]
    with pytest.raises(Refused, match=r"^denied by the agent's policy: container keep-db "):
        guard.check(api, KillContainer(request_id="r", container_id=db["Id"][:12]))
    with pytest.raises(Refused, match=r"side has protected label tier=prod .*recreates it"):
        guard.check(api, UpdateContainer(request_id="r", container_id="web", new_image="a:2"))
    with pytest.raises(Refused, match=r"keep-db .*disconnects it from backend"):
        guard.check(api, DeleteNetwork(request_id="r", network_id="backend", force=True))
    plain = guard.check(api, DeleteNetwork(request_id="r", network_id="backend"))
    assert plain is not None and plain.targets == ()  # without force the handler refuses
    assert guard.check(api, StartShell(session_id="s", container_id="web")) is not None
    own = Guard(Policy(), own_container_id=web["Id"][:12])
    with pytest.raises(Refused, match="refusing to remove the agent's own container"):
        own.check(api, RemoveContainer(request_id="r", container_id="web"))
    assert own.check(api, StartContainer(request_id="r", container_id="web")) is not None
    with pytest.raises(Refused, match="own container"):
        Guard(Policy(), own_container_id=side["Id"]).check(
            api, UpdateContainer(request_id="r", container_id="web", new_image="a:2")
        )  # the agent itself sharing web's namespace would be recreated mid-update
    with pytest.raises(Refused, match="keep-db"):
        Guard(PROTECTED, db["Id"]).check(api, SelfUpdate(request_id="r", image="", version=""))


def test_targets_read_names_and_labels_from_inspect_objects_and_summaries() -> None:
    info = container("web", 1, tier="prod")
    summary = {"Id": info["Id"], "Names": ["/web"], "Labels": {"tier": "prod"}}
    assert Target.of(info) == Target.of(summary) == Target(info["Id"], "web", (("tier", "prod"),))


def test_every_container_changing_route_has_a_refusal_case_on_the_real_daemon() -> None:
    assert set(REFUSALS) == set(CHANGES)
