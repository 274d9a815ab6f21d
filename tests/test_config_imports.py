"""The configuration and the logs sit low in the import graph (issue 11.6).

``agent_config`` is read by the CLI and the doctor; it may use pure rules, runtime helpers and
messages, never an actor, a flow, a command family or a transport (it once imported the 566-line
self-update flow for one parser). Actors register secrets with ``actors.runtime.logs``, which
imports nothing of the agent, so no actor needs ``agent_config``. Imports are read from the
source (every ``import``, also those inside functions), so a new upward arrow fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

AGENT = ("actors", "messages", "agent_config", "agent_cli", "supervisor")
#: where the configuration may reach, directly or through what it imports
LOW = ("actors.errors", "actors.host.", "actors.rules.", "actors.runtime.", "messages.")
#: the doctor is the CLI's ``doctor`` command: it loads the configuration to check it
READS_THE_CONFIG = ("agent_cli", "actors.doctor.")


def module_file(name: str) -> Path | None:
    base = REPO_ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(name: str) -> set[str]:
    """The agent modules ``name`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    path = module_file(name)
    assert path is not None, name
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(
                f"{node.module}.{alias.name}"
                for alias in node.names
                if module_file(f"{node.module}.{alias.name}")
            )
    return {m for m in found if m.split(".")[0] in AGENT and module_file(m)}


def reachable_from(name: str) -> set[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        for imported in imports_of(todo.pop()) - seen:
            seen.add(imported)
            todo.append(imported)
    return seen


def all_modules() -> list[str]:
    names = ["agent_cli", "agent_config", "supervisor"]
    for package in ("actors", "messages"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def is_low(name: str) -> bool:
    """A package ``__init__`` on the way, or a module of the low layers."""
    packages = ("actors", "messages", *(p.rstrip(".") for p in LOW))
    return name in packages or name.startswith(LOW)


def test_the_configuration_reaches_only_low_modules() -> None:
    reached = reachable_from("agent_config")
    assert sorted(m for m in reached if not is_low(m)) == []
    assert {"actors.rules.paths", "actors.rules.image_refs", "actors.runtime.logs"} <= reached


def test_the_logs_import_nothing_of_the_agent() -> None:
    assert imports_of("actors.runtime.logs") == set()


def test_only_the_cli_and_the_doctor_import_the_configuration() -> None:
    importers = [m for m in all_modules() if "agent_config" in imports_of(m)]
    assert importers, "the check finds nothing: it is broken"
    assert sorted(m for m in importers if not m.startswith(READS_THE_CONFIG)) == []
    assert "agent_config" not in reachable_from("actors.token_store")
