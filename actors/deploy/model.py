"""The stack as compose resolved it (``docker compose config --format json``), and the checks the
agent makes on it before anything runs: ``build:`` refused, protected container names.

The resolved model holds interpolated values (env files inlined into ``environment``): it is
never logged or stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from actors.rules.policy import Policy
from messages.records import record


@record
class ServiceModel:
    name: str
    image: str
    build: bool
    container_names: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]


@record
class StackModel:
    raw: Mapping[str, Any]
    services: tuple[ServiceModel, ...]

    @property
    def images(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.image for s in self.services if s.image))


def _replicas(service: Mapping[str, Any]) -> int:
    for value in (service.get("scale"), (service.get("deploy") or {}).get("replicas")):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return 1


def parse_model(project: str, text: str) -> StackModel:
    """Raises ValueError when compose printed something that is not a model."""
    raw = json.loads(text)
    if not isinstance(raw, dict) or not isinstance(raw.get("services", {}), dict):
        raise ValueError("compose config printed no services map")
    services: list[ServiceModel] = []
    for name, service in sorted((raw.get("services") or {}).items()):
        if not isinstance(service, dict):
            continue
        explicit = service.get("container_name")
        if isinstance(explicit, str) and explicit:
            names: tuple[str, ...] = (explicit,)
        else:
            names = tuple(f"{project}-{name}-{n}" for n in range(1, _replicas(service) + 1))
        labels = service.get("labels") or {}
        if isinstance(labels, list):  # compose normalizes to a map; be lenient anyway
            labels = dict(str(item).partition("=")[::2] for item in labels)
        services.append(
            ServiceModel(
                name=name,
                image=str(service.get("image") or ""),
                build="build" in service,
                container_names=names,
                labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
            )
        )
    return StackModel(raw=raw, services=tuple(services))


def build_refusal(model: StackModel) -> str | None:
    """The backend refuses ``build:`` for anything but ``down`` (§8.1); so does the agent."""
    built = [s.name for s in model.services if s.build]
    if not built:
        return None
    return (
        f"compose files with build: are not supported (service{'s' if len(built) > 1 else ''} "
        f"{', '.join(built)}); build and push the image to a registry and use image: instead"
    )


def protected_refusal(
    policy: Policy, containers: Iterable[tuple[str, Mapping[str, str] | None]]
) -> str | None:
    """Why the policy refuses a deployment that would create, recreate or remove these
    containers (name, labels), or None. The one place deploys consult protected containers."""
    for name, labels in containers:
        denial = policy.check_container("remove", name, labels)
        if denial is not None:
            return f"{denial} (deploy_compose would recreate or remove it)"
    return None


def touched_containers(model: StackModel) -> list[tuple[str, Mapping[str, str] | None]]:
    """(name, labels) of every container the model would create."""
    return [
        (name, dict(service.labels))
        for service in model.services
        for name in service.container_names
    ]
