"""OTP semantics of supervisor.py, proven with small real pykka actors and a manual clock.

Children are :class:`Worker` actors (``SupervisedActor`` subclasses) that write every lifecycle
step to a shared :class:`Journal`. Restart timers go through a ``FakeScheduler``, so a restart
happens exactly when a test calls ``advance()``; ``ask(Ping)`` on the supervisor is the barrier
that proves it has handled everything told to it before. No Docker, no network, no sleeping.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, cast

import pykka
import pytest

from actors.base import ActorContext, Peers, SupervisedActor
from actors.errors import FatalError, TransientError
from messages.common import Ping, Pong
from messages.roles import Role
from messages.supervision import ChildFailed, RestartChildren
from supervisor import ChildSpec, Restart, Strategy, Supervisor
from tests.support.fakes import FakeClock, FakeScheduler

REPO_ROOT = Path(__file__).resolve().parent.parent
ACTOR_CLASSES = ("Worker", "Sink", "SupervisorActor")


# --------------------------------------------------------------------------------------------
# test actors and their messages


@dataclass(frozen=True, slots=True, kw_only=True)
class Crash:
    """Told to a Worker: raise in the handler (a FatalError if ``fatal``)."""

    fatal: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Identify:
    """Asked of a Worker: answered with the serial number of the actor object."""


JournalEntry = tuple[str, str, int]  # (what, child_id, generation)


class Journal:
    """Thread-safe record of what the workers did, in the order they did it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._entries: list[JournalEntry] = []

    def record(self, what: str, child_id: str, generation: int) -> None:
        with self._cond:
            self._entries.append((what, child_id, generation))
            self._cond.notify_all()

    def entries(self, what: str | None = None) -> list[JournalEntry]:
        with self._cond:
            return [e for e in self._entries if what is None or e[0] == what]

    def ids(self, what: str) -> list[str]:
        return [child_id for _, child_id, _ in self.entries(what)]

    def wait_for(self, entry: JournalEntry, timeout: float = 3.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: entry in self._entries, timeout):
                raise AssertionError(f"no {entry} within {timeout}s; got {self._entries}")


class Worker(SupervisedActor):
    """A child that journals start, start confirmation (Ping), stop and failure."""

    _serials = itertools.count(1)

    def __init__(
        self,
        ctx: ActorContext,
        journal: Journal,
        *,
        fail_start: bool | threading.Event = False,
        hold_start: threading.Event | None = None,
    ) -> None:
        super().__init__(ctx)
        self.journal = journal
        self.fail_start = fail_start
        self.hold_start = hold_start
        self.serial = next(self._serials)

    def _record(self, what: str) -> None:
        self.journal.record(what, self.ctx.child_id, self.ctx.generation)

    def on_start(self) -> None:
        self._record("start")
        if self.hold_start is not None:
            self.hold_start.wait(10)
        if self.fail_start is True or (
            isinstance(self.fail_start, threading.Event) and self.fail_start.is_set()
        ):
            raise RuntimeError(f"{self.ctx.child_id} cannot start")

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Ping):
            self._record("ping")
        return super().on_receive(message)

    def handle(self, message: Any) -> Any:
        match message:
            case Crash(fatal=True):
                raise FatalError(f"{self.ctx.child_id} hit a fatal error")
            case Crash():
                raise RuntimeError(f"{self.ctx.child_id} crashed")
            case Identify():
                return self.serial
        return None

    def on_stop(self) -> None:
        self._record("stop")
        super().on_stop()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        super().on_failure(exception_type, exception_value, traceback)
        # Recorded after the base class told ChildFailed: once this entry exists, the report is
        # in the supervisor's inbox and an ask(Ping) to the supervisor is a barrier behind it.
        self._record("failed")


class Sink(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return None


def child_role(name: str) -> Role:
    """These tests give children made-up names ("a", "b", ...): the supervisor and Peers treat a
    role as an opaque name (a StrEnum is a str), so one outside the agent's roles is fine here."""
    return cast(Role, name)


def worker_spec(
    journal: Journal,
    child_id: str,
    *,
    restart: Restart = Restart.PERMANENT,
    fail_start: bool | threading.Event = False,
    hold_start: threading.Event | None = None,
    start_timeout: float = 5.0,
) -> ChildSpec:
    def factory(ctx: ActorContext) -> pykka.ActorRef[Any]:
        return Worker.start(ctx, journal, fail_start=fail_start, hold_start=hold_start)

    return ChildSpec(
        child_role(child_id),
        factory,
        restart=restart,
        shutdown_timeout=3.0,
        start_timeout=start_timeout,
    )


# --------------------------------------------------------------------------------------------
# rig


@dataclass
class Rig:
    sup: Supervisor
    journal: Journal
    clock: FakeClock
    scheduler: FakeScheduler

    @property
    def peers(self) -> Peers:
        return self.sup.peers

    def generations(self) -> dict[str, int]:
        """Barrier: the supervisor has handled everything told to it before this call."""
        assert self.sup.ref is not None
        result = self.sup.ref.ask(Ping(), timeout=5)
        assert isinstance(result, dict)
        return result

    def ref(self, child_id: str) -> pykka.ActorRef[Any]:
        ref = self.peers.get(child_role(child_id))
        assert ref is not None, f"{child_id} is not running"
        return ref

    def crash(self, child_id: str, *, fatal: bool = False) -> None:
        """Make ``child_id`` raise in a tell handler; return once the supervisor handled it."""
        generation = self.generations()[child_id]
        self.ref(child_id).tell(Crash(fatal=fatal))
        self.journal.wait_for(("failed", child_id, generation))
        with contextlib.suppress(pykka.ActorDeadError):  # unless it has shut down since
            self.generations()

    def restart_timer(self) -> tuple[tuple[str, ...], float]:
        """The one pending restart: (child ids, seconds until due)."""
        timers = self.scheduler.pending(RestartChildren)
        assert len(timers) == 1, timers
        message = timers[0].message
        assert isinstance(message, RestartChildren)
        return message.child_ids, timers[0].due - self.clock.now

    def fire_restart(self) -> tuple[str, ...]:
        ids, delay = self.restart_timer()
        self.scheduler.advance(delay)
        return ids


class MakeRig(Protocol):
    def __call__(
        self, children: Sequence[str | ChildSpec], *, confirm: bool = True, **options: Any
    ) -> Rig: ...


@pytest.fixture(autouse=True)
def no_actor_threads_left() -> Iterator[None]:
    """Stop every actor after the test and prove no actor (or scheduler) thread survives."""
    before = set(threading.enumerate())
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=5)
    new = [t for t in threading.enumerate() if t not in before]
    for thread in new:
        thread.join(timeout=3)
    alive = [t.name for t in new if t.is_alive()]
    assert not alive, f"threads still alive after the test: {alive}"
    actor_threads = [t.name for t in threading.enumerate() if t.name.startswith(ACTOR_CLASSES)]
    assert not actor_threads, f"pykka actor threads still alive: {actor_threads}"


@pytest.fixture
def journal() -> Journal:
    return Journal()


@pytest.fixture
def make_rig(journal: Journal) -> Iterator[MakeRig]:
    started: list[Supervisor] = []

    def make(children: Sequence[str | ChildSpec], *, confirm: bool = True, **options: Any) -> Rig:
        clock = FakeClock()
        scheduler = FakeScheduler(clock)
        specs = [c if isinstance(c, ChildSpec) else worker_spec(journal, c) for c in children]
        options.setdefault("restart_delay", (1.0, 8.0))
        sup = Supervisor(specs, scheduler=scheduler, clock=clock, **options)
        started.append(sup)
        rig = Rig(sup.start(), journal, clock, scheduler)
        if confirm:
            assert rig.generations() == {rig_id: 1 for rig_id in (s.child_id for s in specs)}
        return rig

    yield make
    for sup in started:
        sup.stop("test over")


def all_stopped(refs: Sequence[pykka.ActorRef[Any]]) -> bool:
    return not any(ref.is_alive() for ref in refs)


# --------------------------------------------------------------------------------------------
# 1. ordered start, confirmed; reverse stop


def test_children_start_in_order_each_confirmed_and_stop_in_reverse(
    make_rig: MakeRig, journal: Journal
) -> None:
    rig = make_rig(["a", "b", "c"])

    # Each start is confirmed by a Ping before the next child is even created.
    assert journal.entries() == [
        ("start", "a", 1),
        ("ping", "a", 1),
        ("start", "b", 1),
        ("ping", "b", 1),
        ("start", "c", 1),
        ("ping", "c", 1),
    ]
    refs = [rig.ref(c) for c in "abc"]

    assert rig.sup.stop("test") == 0

    assert journal.ids("stop") == ["c", "b", "a"]
    assert all_stopped(refs)
    assert rig.sup.exit_code == 0
    assert [rig.peers.get(child_role(c)) for c in "abc"] == [None, None, None]


def test_a_child_failing_in_on_start_fails_the_start_and_stops_earlier_children_in_reverse(
    make_rig: MakeRig, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="supervisor")
    specs = [
        worker_spec(journal, "a"),
        worker_spec(journal, "b"),
        worker_spec(journal, "c", fail_start=True),
        worker_spec(journal, "d"),
    ]
    rig = make_rig(specs, confirm=False)

    assert rig.sup.wait(5) == 1
    assert "c failed to start" in rig.sup.exit_reason
    assert journal.ids("start") == ["a", "b", "c"]  # d is never created
    assert ("ping", "c", 1) not in journal.entries()
    assert journal.ids("stop") == ["b", "a"]
    assert [rig.peers.get(child_role(c)) for c in "abcd"] == [None] * 4
    assert "c failed to start" in caplog.text


def test_a_child_that_does_not_confirm_its_start_in_time_fails_the_start(
    make_rig: MakeRig, journal: Journal
) -> None:
    release = threading.Event()
    specs = [
        worker_spec(journal, "a"),
        worker_spec(journal, "slow", hold_start=release, start_timeout=0.25),
    ]
    try:
        rig = make_rig(specs, confirm=False)
        assert rig.sup.wait(5) == 1
        assert "slow failed to start: no answer within 0.25s" in rig.sup.exit_reason
        assert journal.ids("stop") == ["a"]
        assert rig.peers.get(child_role("slow")) is None
    finally:
        release.set()  # let the stuck on_start return so the actor can process its stop


def test_duplicate_child_ids_are_rejected_in_the_callers_thread(journal: Journal) -> None:
    clock = FakeClock()
    sup = Supervisor(
        [worker_spec(journal, "a"), worker_spec(journal, "a")],
        scheduler=FakeScheduler(clock),
        clock=clock,
    )
    with pytest.raises(ValueError, match="duplicate child ids"):
        sup.start()
    assert journal.entries() == []


# --------------------------------------------------------------------------------------------
# 2. crash -> fresh instance (ONE_FOR_ONE)


def test_one_for_one_replaces_a_crashed_child_with_a_fresh_instance(
    make_rig: MakeRig, journal: Journal
) -> None:
    rig = make_rig(["a", "b", "c"])
    before = {c: rig.ref(c) for c in "abc"}
    old_serial = before["b"].ask(Identify(), timeout=3)

    rig.crash("b")

    assert rig.generations() == {"a": 1, "c": 1}
    assert rig.peers.get(child_role("b")) is None
    assert not before["b"].is_alive()
    ids, delay = rig.restart_timer()
    assert (ids, delay) == (("b",), 1.0)  # the first restart waits restart_delay[0]

    rig.scheduler.advance(0.5)
    assert rig.generations() == {"a": 1, "c": 1}, "restarted before the backoff elapsed"

    rig.scheduler.advance(0.5)
    assert rig.generations() == {"a": 1, "b": 2, "c": 1}

    new_b = rig.ref("b")
    assert new_b is not before["b"]
    assert new_b.actor_urn != before["b"].actor_urn
    assert new_b.ask(Identify(), timeout=3) != old_serial  # a new actor object
    assert new_b.ask(Ping(), timeout=3) == Pong(actor="b", generation=2)
    assert rig.peers.tell(child_role("b"), Identify()) is True
    # The siblings kept running untouched: same refs, never stopped or restarted.
    for c in "ac":
        assert rig.ref(c) is before[c]
        assert before[c].is_alive()
    assert journal.ids("stop") == []
    assert journal.entries("start")[-1] == ("start", "b", 2)
    assert rig.scheduler.pending() == []


def test_transient_children_are_restarted_after_a_crash(
    make_rig: MakeRig, journal: Journal
) -> None:
    rig = make_rig([worker_spec(journal, "t", restart=Restart.TRANSIENT)])
    rig.crash("t")
    assert rig.fire_restart() == ("t",)
    assert rig.generations() == {"t": 2}


# --------------------------------------------------------------------------------------------
# 3. ONE_FOR_ALL and REST_FOR_ONE


@pytest.mark.parametrize(
    ("strategy", "crashed", "restarted"),
    [
        (Strategy.ONE_FOR_ONE, "b", "b"),
        (Strategy.ONE_FOR_ALL, "a", "abc"),
        (Strategy.ONE_FOR_ALL, "b", "abc"),
        (Strategy.ONE_FOR_ALL, "c", "abc"),
        (Strategy.REST_FOR_ONE, "a", "abc"),
        (Strategy.REST_FOR_ONE, "b", "bc"),
        (Strategy.REST_FOR_ONE, "c", "c"),
    ],
)
def test_strategies_restart_the_right_set(
    make_rig: MakeRig, journal: Journal, strategy: Strategy, crashed: str, restarted: str
) -> None:
    rig = make_rig(["a", "b", "c"], strategy=strategy)
    before = {c: rig.ref(c) for c in "abc"}

    rig.crash(crashed)

    # The other affected children were stopped (not crashed), in reverse start order.
    assert rig.generations() == {c: 1 for c in "abc" if c not in restarted}
    assert journal.ids("stop") == [c for c in reversed(restarted) if c != crashed]
    assert all_stopped([before[c] for c in restarted])

    assert rig.fire_restart() == tuple(restarted)
    assert rig.generations() == {c: 2 if c in restarted else 1 for c in "abc"}
    # Restarted in start order; the rest are the very same actors.
    assert [e for e in journal.entries("start") if e[2] == 2] == [
        ("start", c, 2) for c in restarted
    ]
    for c in "abc":
        if c in restarted:
            assert rig.ref(c) is not before[c]
            assert rig.ref(c).ask(Ping(), timeout=3) == Pong(actor=c, generation=2)
        else:
            assert rig.ref(c) is before[c]


# --------------------------------------------------------------------------------------------
# 4. restart intensity


def test_restart_intensity_exceeded_stops_everything_with_exit_code_1(
    make_rig: MakeRig, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="supervisor")
    rig = make_rig(["a", "b"], max_restarts=2, period_s=10.0)

    for generation in (2, 3):  # two restarts within the period are allowed
        rig.crash("a")
        assert rig.fire_restart() == ("a",)
        assert rig.generations() == {"a": generation, "b": 1}
    assert rig.clock.now - 1000.0 < 10.0
    b = rig.ref("b")

    rig.crash("a")  # the third within 10 s

    assert rig.sup.wait(5) == 1
    assert "restart intensity exceeded" in rig.sup.exit_reason
    assert journal.ids("stop") == ["b"]
    assert not b.is_alive()
    assert rig.peers.get(child_role("a")) is None and rig.peers.get(child_role("b")) is None
    assert rig.scheduler.pending(RestartChildren) == []
    assert any(
        r.levelno == logging.ERROR and "restart intensity exceeded" in r.getMessage()
        for r in caplog.records
    ), caplog.text


def test_restarts_spread_beyond_the_period_do_not_trip_the_intensity(make_rig: MakeRig) -> None:
    rig = make_rig(["a", "b"], max_restarts=2, period_s=10.0)

    for generation in range(2, 8):  # six restarts, each more than 10 s after the previous one
        rig.crash("a")
        ids, delay = rig.restart_timer()
        assert (ids, delay) == (("a",), 1.0)  # the backoff resets too
        rig.scheduler.advance(delay)
        assert rig.generations() == {"a": generation, "b": 1}
        rig.scheduler.advance(10.5)

    assert rig.sup.exit_code is None


def test_backoff_grows_with_recent_restarts(make_rig: MakeRig) -> None:
    rig = make_rig(["a"], max_restarts=5, period_s=100.0, restart_delay=(1.0, 3.0))
    delays = []
    for _ in range(4):
        rig.crash("a")
        delays.append(rig.restart_timer()[1])
        rig.fire_restart()
        rig.generations()
    assert delays == [1.0, 2.0, 3.0, 3.0]  # doubled, capped at restart_delay[1]


def test_a_failed_restart_is_retried_with_backoff_and_counts_towards_the_intensity(
    make_rig: MakeRig, journal: Journal
) -> None:
    broken = threading.Event()
    rig = make_rig(
        [worker_spec(journal, "a"), worker_spec(journal, "b", fail_start=broken)],
        strategy=Strategy.REST_FOR_ONE,
        max_restarts=2,
        period_s=10.0,
    )
    a = rig.ref("a")
    rig.crash("b")
    broken.set()

    assert rig.fire_restart() == ("b",)
    assert rig.generations() == {"a": 1}  # generation 2 of b died in on_start
    assert rig.restart_timer() == (("b",), 2.0)  # retried, backoff doubled

    broken.clear()
    rig.fire_restart()
    assert rig.generations() == {"a": 1, "b": 3}
    assert rig.ref("a") is a

    rig.crash("b")  # third restart within 10 s, counting the failed one
    assert rig.sup.wait(5) == 1
    assert "restart intensity exceeded" in rig.sup.exit_reason


# --------------------------------------------------------------------------------------------
# 5. FatalError escalates


def test_fatal_error_in_a_child_is_never_restarted_and_shuts_down_with_code_1(
    make_rig: MakeRig, journal: Journal
) -> None:
    rig = make_rig(["a", "b", "c"])
    refs = [rig.ref(c) for c in "abc"]

    rig.crash("b", fatal=True)

    assert rig.sup.wait(5) == 1
    assert "b: FatalError: b hit a fatal error" in rig.sup.exit_reason
    assert journal.ids("stop") == ["c", "a"]
    assert all_stopped(refs)
    assert rig.scheduler.pending(RestartChildren) == []
    rig.scheduler.advance(60.0)
    assert [e for e in journal.entries("start") if e[2] > 1] == []


# --------------------------------------------------------------------------------------------
# 6. stale reports


@pytest.mark.parametrize("fatal", [False, True])
def test_a_stale_child_failed_is_ignored(make_rig: MakeRig, fatal: bool) -> None:
    rig = make_rig(["a", "b"])
    rig.crash("a")
    rig.fire_restart()
    assert rig.generations() == {"a": 2, "b": 1}
    a2 = rig.ref("a")

    assert rig.sup.ref is not None
    rig.sup.ref.tell(ChildFailed(child_id="a", generation=1, error="late report", fatal=fatal))

    assert rig.generations() == {"a": 2, "b": 1}
    assert rig.ref("a") is a2 and a2.is_alive()
    assert rig.scheduler.pending() == []
    assert rig.sup.exit_code is None


# --------------------------------------------------------------------------------------------
# 7. TEMPORARY


def test_temporary_children_are_not_restarted(make_rig: MakeRig, journal: Journal) -> None:
    rig = make_rig(
        [worker_spec(journal, "a"), worker_spec(journal, "t", restart=Restart.TEMPORARY)]
    )
    a = rig.ref("a")

    rig.crash("t")

    assert rig.generations() == {"a": 1}
    assert rig.scheduler.pending() == []
    rig.scheduler.advance(60.0)
    assert rig.generations() == {"a": 1}
    assert rig.peers.get(child_role("t")) is None
    assert rig.ref("a") is a and a.is_alive()
    assert rig.sup.exit_code is None


# --------------------------------------------------------------------------------------------
# 8. Supervisor.run() and signals, in a real process

SCRIPT = """
    import logging
    import signal
    import sys
    import threading
    from typing import Any

    sys.path.insert(0, {repo!r})

    from actors.base import SupervisedActor
    from messages.common import Ping
    from supervisor import ChildSpec, Supervisor


    class Dummy(SupervisedActor):
        def handle(self, message: Any) -> None:
            return None

        def on_stop(self) -> None:
            print("dummy stopped", flush=True)
            super().on_stop()


    class SignalledWhileStarting(Supervisor):
        def start(self) -> Supervisor:
            signal.raise_signal(signal.SIGTERM)  # before the supervisor actor exists
            return super().start()


    def announce(sup: Supervisor) -> None:
        pause = threading.Event()
        while sup.ref is None:
            pause.wait(0.01)
        sup.ref.ask(Ping(), timeout=5)  # answered once every child's start is confirmed
        print("ready", flush=True)


    logging.basicConfig(level=logging.INFO, format="%(threadName)s %(name)s: %(message)s")
    early = sys.argv[1] == "early"
    sup = (SignalledWhileStarting if early else Supervisor)(
        [ChildSpec("dummy", Dummy.start)], shutdown_deadline=8.0
    )
    if not early:
        threading.Thread(target=announce, args=(sup,), daemon=True).start()
    sys.exit(sup.run())
"""


def run_script(tmp_path: Path, mode: str) -> subprocess.Popen[str]:
    script = tmp_path / "agent_under_test.py"
    script.write_text(textwrap.dedent(SCRIPT).format(repo=str(REPO_ROOT)))
    return subprocess.Popen(
        [sys.executable, str(script), mode],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.timeout(30)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_exits_0_promptly_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    proc = run_script(tmp_path, "normal")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "ready\n", (line, proc.stderr.read() if proc.stderr else "")

        sent = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 0, err
    assert elapsed < 10.0
    assert "dummy stopped" in out
    assert f"received {sig.name}, stopping" in err
    assert "Traceback" not in err
    assert "bug:" not in err  # nothing was left for the leftover sweep


@pytest.mark.timeout(30)
def test_run_honours_a_signal_that_arrives_while_starting(tmp_path: Path) -> None:
    proc = run_script(tmp_path, "early")
    try:
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "received SIGTERM" in err
    assert "dummy stopped" in out


# --------------------------------------------------------------------------------------------
# 9. Peers: dead letters


def test_peers_tell_to_a_missing_role_is_a_logged_dead_letter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="actors.base")
    peers = Peers()

    assert peers.tell(Role.SHELL, Ping()) is False

    assert "dead letter: Ping for shell" in caplog.text


def test_peers_tell_to_a_dead_ref_is_a_logged_dead_letter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="actors.base")
    peers = Peers()
    ref = Sink.start()
    peers.set(Role.STATUS, ref)
    assert peers.tell(Role.STATUS, Ping()) is True
    ref.stop(block=True, timeout=3)

    assert peers.tell(Role.STATUS, Ping()) is False

    assert "dead letter: Ping for status" in caplog.text
    with pytest.raises(TransientError, match="status stopped"):
        peers.ask(Role.STATUS, Ping(), timeout=1)
    with pytest.raises(TransientError, match="shell is not running"):
        peers.ask(Role.SHELL, Ping(), timeout=1)


def test_peers_remove_with_a_stale_ref_keeps_the_new_one() -> None:
    peers = Peers()
    old, new = Sink.start(), Sink.start()
    peers.set(Role.STATUS, old)
    peers.set(Role.STATUS, new)
    peers.remove(Role.STATUS, old)
    assert peers.get(Role.STATUS) is new
    peers.remove(Role.STATUS, new)
    assert peers.get(Role.STATUS) is None


def test_a_crash_of_the_supervisor_itself_stops_children_and_exits_1() -> None:
    """A supervisor bug must end the process (container restart policy), never hang it."""
    started = threading.Event()
    stopped = threading.Event()

    class Child(SupervisedActor):
        def on_start(self) -> None:
            started.set()

        def on_stop(self) -> None:
            stopped.set()

        def handle(self, message: object) -> None:
            return None

    sup = Supervisor([ChildSpec(child_role("child"), lambda ctx: Child.start(ctx))]).start()
    assert started.wait(5)
    assert sup.ref is not None
    sup.ref.tell(pykka.messages.ProxyCall(attr_path=("no_such_method",), args=(), kwargs={}))
    assert sup.wait(5) == 1
    assert stopped.is_set()
    assert "supervisor crashed" in sup.exit_reason
    sup.stop()
