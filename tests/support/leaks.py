"""What a test may not leave behind: actors and the agent's threads (tests/conftest.py checks).

An actor thread is a pykka actor's loop (whatever the actor's class, the tests' probes too); an
agent thread is one whose code lives in the agent (``actors``, ``messages``, ``supervisor``,
``agent_cli``, ``agent_config``): the Scheduler, every reader/writer, worker pool and flow
thread. Both are recognised by the code the thread runs, not by its name, so a renamed helper
thread is still found. Threads the tests themselves start (hubs, proxies, readers in a test)
are the test's business and are not counted.

The rule is "no more than before the test", per kind (actor class, or the function a thread
runs): an agent that a module-scoped fixture runs may restart a crashed actor during a test,
and the restarted actor (with its helper threads) replaces the one that was there; it adds
nothing. A test that starts from nothing must end with nothing.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pykka

AGENT_MODULES = ("actors", "messages", "supervisor", "agent_cli", "agent_config")

PROCESS_WIDE = frozenset({("actors.health_checks", "_Watchdog._run")})
"""Agent threads that belong to the process, not to an actor, and end by themselves: the health
checks' deadline watchdog is one thread for every check and exits after 10 s without work."""

T = TypeVar("T")


def _is_agent_module(module: str) -> bool:
    return any(module == m or module.startswith(f"{m}.") for m in AGENT_MODULES)


def thread_kind(thread: threading.Thread) -> str | None:
    """``actor <Class>`` for a pykka actor loop, ``<module>.<function>`` for a thread running
    the agent's own code, None for anything else (or a thread that has finished its code)."""
    target: Any = getattr(thread, "_target", None)  # CPython keeps it until run() returns
    while isinstance(target, functools.partial):
        target = target.func
    owner = getattr(target, "__self__", None)
    if isinstance(owner, pykka.Actor):
        return f"actor {type(owner).__name__}"
    if target is None:
        module, name = type(thread).__module__, type(thread).__qualname__
    else:
        module = getattr(target, "__module__", None) or ""
        name = getattr(target, "__qualname__", None) or type(target).__qualname__
    if not _is_agent_module(module) or (module, name) in PROCESS_WIDE:
        return None
    return f"{module}.{name}"


def is_actor_or_agent_thread(thread: threading.Thread) -> bool:
    return thread_kind(thread) is not None


def _actor_kind(ref: pykka.ActorRef[Any]) -> str:
    return f"actor {ref.actor_class.__name__}"


@dataclass(frozen=True)
class Baseline:
    """The actors and actor/agent threads alive before a test (a module or session fixture may
    own some), counted per kind."""

    actors: frozenset[pykka.ActorRef[Any]]
    actor_kinds: Counter[str]
    threads: frozenset[threading.Thread]
    thread_kinds: Counter[str]

    @classmethod
    def now(cls) -> Baseline:
        refs = pykka.ActorRegistry.get_all()
        threads = {t: k for t in threading.enumerate() if (k := thread_kind(t)) is not None}
        return cls(
            frozenset(refs),
            Counter(_actor_kind(r) for r in refs),
            frozenset(threads),
            Counter(threads.values()),
        )


def _excess(
    items: Sequence[T], kind: Callable[[T], str | None], before: Counter[str], old: frozenset[T]
) -> list[T]:
    """The new items of every kind that has more items alive than the baseline had."""
    by_kind: dict[str, list[T]] = {}
    for item in items:
        k = kind(item)
        if k is not None:
            by_kind.setdefault(k, []).append(item)
    excess: list[T] = []
    for k, alive in by_kind.items():
        extra = len(alive) - before[k]
        if extra > 0:
            excess.extend([i for i in alive if i not in old][-extra:])
    return excess


def leftovers(baseline: Baseline, timeout: float) -> list[str]:
    """What the test left: actors still registered and actor/agent threads still alive beyond
    the baseline.

    Each check waits at most ``timeout`` (an actor told to stop unregisters itself from its own
    thread; a helper thread ends once its resource is closed), and only while something is
    still winding down. Leftover actors are then stopped so the next test starts clean; the
    result says what there was."""
    problems: list[str] = []

    def actors() -> list[pykka.ActorRef[Any]]:
        return _excess(
            pykka.ActorRegistry.get_all(), _actor_kind, baseline.actor_kinds, baseline.actors
        )

    deadline = time.monotonic() + timeout
    while (left := actors()) and left[0].actor_stopped.wait(_left(deadline)):
        pass
    if left:
        problems.append(f"actors still running: {sorted(str(r) for r in left)}")
        for ref in left:
            ref.stop(block=False)

    def threads() -> list[threading.Thread]:
        alive = [t for t in threading.enumerate() if t.is_alive()]
        return _excess(alive, thread_kind, baseline.thread_kinds, baseline.threads)

    deadline = time.monotonic() + timeout
    while (alive := threads()) and _joined(alive[0], _left(deadline)):
        pass
    if alive:
        problems.append(f"actor/agent threads still alive: {sorted(t.name for t in alive)}")
    return problems


def _joined(thread: threading.Thread, timeout: float) -> bool:
    thread.join(timeout)
    return not thread.is_alive()


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
