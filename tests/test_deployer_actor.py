"""The Deployer actor with a fake run body at its seam: acks, one deployment per stack, the
journal, redelivery, restarts and shutdown. The real run (compose, Docker) is proven end to end
in test_deploy_e2e.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors.base import Peers
from actors.deploy.control import RunControl, RunSettings
from actors.deploy.engine import ComposeEngine, ComposeMissing
from actors.deploy.journal import Entry, Journal
from actors.deployer import NOT_AVAILABLE, DeployerActor, DeployerSettings, DeployRuns
from messages.common import Ping
from messages.deploy import DeployCompose
from messages.docker import CommandFailed, CommandSucceeded
from messages.outbound import (
    AuditRecord,
    EventDelivered,
    EventOut,
    LinkStateChanged,
    TrackedEventOut,
)
from messages.roles import Role
from tests.support.fakes import FakeClock, FakeScheduler, ProbeHandle, make_ctx

ENGINE = ComposeEngine(path="/usr/bin/false", version="5.6.1")


@dataclass
class Body:
    """A run body the test steers: it reports, then waits for ``release`` (or a cancel)."""

    release: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    journal_seen: list[str] = field(default_factory=list)
    journal: Journal | None = None

    def __call__(
        self, msg: DeployCompose, control: RunControl, report: Callable[[str, str], None]
    ) -> dict[str, Any]:
        if self.journal is not None:
            self.journal_seen += [e.state for e in self.journal.load_all()]
        report("starting", "Starting deployment...")
        self.started.set()
        while not self.release.is_set():
            if control.wait(0.01):
                return {
                    "deployment_id": msg.deployment_id,
                    "action": msg.action,
                    "success": False,
                    "error": f"deployment interrupted: {control.reason}",
                }
        return {"deployment_id": msg.deployment_id, "action": msg.action, "success": True}


@dataclass
class Rig:
    tmp: Path
    peers: Peers
    connection: ProbeHandle
    runs: DeployRuns
    body: Body
    ref: pykka.ActorRef[Any] | None = None

    @property
    def journal(self) -> Journal:
        return Journal(str(self.tmp / "data"))

    def start(self, engine: Any = ENGINE, stop_timeout: float = 5.0) -> pykka.ActorRef[Any]:
        clock = FakeClock()
        settings = DeployerSettings(
            run=RunSettings(
                docker_host="unix:///nonexistent.sock",
                data_path=str(self.tmp / "data"),
                stacks_dir=str(self.tmp / "stacks"),
            ),
            stop_timeout=stop_timeout,
        )
        self.ref = DeployerActor.start(
            make_ctx(self.peers, FakeScheduler(clock), clock, child_id="deployer"),
            settings=settings,
            runs=self.runs,
            engine=engine,
            run_body=self.body,
        )
        self.peers.set(Role.DEPLOYER, self.ref)
        self.ref.ask(Ping(), timeout=3)
        return self.ref

    def deploy(self, project: str = "site", deployment_id: str = "d-1", **kw: Any) -> None:
        assert self.ref is not None
        self.ref.tell(
            DeployCompose(
                request_id=f"r-{deployment_id}",
                deployment_id=deployment_id,
                project_name=project,
                **kw,
            )
        )

    def reply(self, deployment_id: str = "d-1") -> CommandSucceeded | CommandFailed:
        return self.connection.expect(
            CommandSucceeded | CommandFailed,  # type: ignore[arg-type]
            where=lambda m: m.request_id == f"r-{deployment_id}",
        )

    def result(self, deployment_id: str = "d-1", timeout: float = 3.0) -> dict[str, Any]:
        msg = self.connection.expect(
            TrackedEventOut, timeout=timeout, where=lambda m: m.key == deployment_id
        )
        assert (msg.command, msg.owner) == ("deploy_complete", "deployer")
        return dict(msg.payload.value())


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    peers = Peers()
    connection = ProbeHandle()
    peers.set(Role.CONNECTION, connection.ref)
    body = Body()
    body.journal = Journal(str(tmp_path / "data"))
    yield Rig(tmp_path, peers, connection, DeployRuns(), body)
    body.release.set()
    pykka.ActorRegistry.stop_all()


def test_without_compose_deployments_are_refused_with_the_go_text(rig: Rig) -> None:
    rig.start(engine=ComposeMissing("no docker-compose binary found"))
    rig.deploy()
    assert rig.reply() == CommandFailed(request_id="r-d-1", error=NOT_AVAILABLE)
    assert NOT_AVAILABLE == "compose deployments not available on this agent"


def test_ack_progress_result_audit_and_journal(rig: Rig) -> None:
    rig.start()
    rig.deploy(compose_content="services: {}\n")
    ack = rig.reply()
    assert isinstance(ack, CommandSucceeded)
    assert ack.payload.value() == {"status": "deployment_started"}
    progress = rig.connection.expect(EventOut)
    assert progress.command == "deploy_progress"
    assert progress.payload.value() == {
        "deployment_id": "d-1",
        "stage": "starting",
        "message": "Starting deployment...",
    }
    assert rig.body.started.wait(3)
    assert rig.body.journal_seen == ["running"]  # journaled before the run (and the ack)
    rig.body.release.set()
    assert rig.result() == {"deployment_id": "d-1", "action": "up", "success": True}
    audit = rig.connection.expect(AuditRecord)
    assert audit == AuditRecord(
        operation="deploy_compose", target="site", result="up finished: success"
    )
    (entry,) = rig.journal.load_all()
    assert entry.state == "finished" and entry.result is not None
    raw = next(rig.journal.directory.glob("*.json"))
    assert oct(raw.stat().st_mode & 0o777) == "0o600"
    assert "services: {}" not in raw.read_text()  # never the compose file
    # sent again after every registration until a pong confirms it; then forgotten
    assert rig.ref is not None
    rig.ref.tell(LinkStateChanged(connected=True))
    assert rig.result()["success"] is True
    rig.ref.tell(EventDelivered(key="d-1"))
    rig.ref.ask(Ping(), timeout=3)
    assert rig.journal.load_all() == []
    rig.ref.tell(LinkStateChanged(connected=True))
    rig.ref.ask(Ping(), timeout=3)
    assert not [m for m in rig.connection.received if isinstance(m, TrackedEventOut)]


def test_one_deployment_per_stack_and_unique_ids(rig: Rig) -> None:
    rig.start()
    rig.deploy("site", "d-1")
    assert isinstance(rig.reply("d-1"), CommandSucceeded)
    assert rig.body.started.wait(3)
    rig.deploy("site", "d-2", action="down")
    refused = rig.reply("d-2")
    assert refused == CommandFailed(
        request_id="r-d-2",
        error=(
            "a deployment of stack site is already running (deployment d-1, up); wait for it "
            "to complete and try again"
        ),
    )
    rig.deploy("site", "d-1")
    assert rig.reply("d-1") == CommandFailed(
        request_id="r-d-1", error="deployment d-1 is already known"
    )
    rig.deploy("other", "d-3")  # another stack runs meanwhile
    assert isinstance(rig.reply("d-3"), CommandSucceeded)
    rig.body.release.set()
    assert rig.result("d-1")["success"] and rig.result("d-3")["success"]
    rig.deploy("site", "d-4")  # the stack is free again
    assert isinstance(rig.reply("d-4"), CommandSucceeded)


def test_the_next_start_reports_interrupted_and_unconfirmed_deployments(rig: Rig) -> None:
    journal = rig.journal
    journal.write(Entry("d-old", "site", "restart", "running"))
    done = {"deployment_id": "d-done", "action": "up", "success": True}
    journal.write(Entry("d-done", "web", "up", "finished", done))
    journal.temp_root.mkdir(parents=True)
    (journal.temp_root / "stale").mkdir()
    (journal.temp_root / "stale" / "config.json").write_text('{"auths":{"x":{"auth":"c2VjcmV0"}}}')
    rig.start()
    assert rig.result("d-done") == done
    assert rig.result("d-old") == {
        "deployment_id": "d-old",
        "action": "restart",
        "success": False,
        "error": (
            "deployment interrupted: the agent stopped while it ran (restart of stack site); "
            "the stack may be partly deployed: check it and deploy again"
        ),
    }
    states = {e.deployment_id: e.state for e in journal.load_all()}
    assert states == {"d-old": "finished", "d-done": "finished"}
    assert list(journal.temp_root.iterdir()) == []  # a dead run's logins do not linger


def test_a_run_outlives_a_crash_of_the_actor_and_reports_to_the_new_one(rig: Rig) -> None:
    first = rig.start()
    rig.deploy()
    assert isinstance(rig.reply(), CommandSucceeded) and rig.body.started.wait(3)
    first.tell(pykka.messages.ProxyCall(attr_path=("no_such_handler",), args=(), kwargs={}))
    assert first.actor_stopped.wait(3)
    rig.peers.remove(Role.DEPLOYER)
    rig.start()  # the supervisor's restart: same registry, journal shows d-1 running
    rig.body.release.set()
    assert rig.result()["success"] is True  # not "interrupted": the run was still alive
    rig.ref.ask(Ping(), timeout=3)  # type: ignore[union-attr]
    results = [m for m in rig.connection.received if isinstance(m, TrackedEventOut)]
    assert results == []  # exactly one result


def test_sigterm_waits_for_the_run_then_cancels_it_and_leaves_it_journaled(rig: Rig) -> None:
    ref = rig.start(stop_timeout=0.2)
    rig.deploy()
    assert isinstance(rig.reply(), CommandSucceeded) and rig.body.started.wait(3)
    ref.stop(block=True, timeout=10)  # on_stop: waits 0.2 s, then cancels the run
    assert [m for m in rig.connection.received if isinstance(m, TrackedEventOut)] == []
    (entry,) = rig.journal.load_all()
    assert entry.state == "finished" and entry.result is not None
    assert entry.result["error"] == "deployment interrupted: the agent was stopped (it waited 0.2s)"
    assert rig.runs.running() == []
    rig.start()  # the next start sends it
    assert rig.result()["error"].startswith("deployment interrupted: the agent was stopped")


def test_sigterm_lets_a_run_that_ends_in_time_finish(rig: Rig) -> None:
    ref = rig.start(stop_timeout=5)
    rig.deploy()
    assert rig.body.started.wait(3)
    threading.Timer(0.2, rig.body.release.set).start()
    ref.stop(block=True, timeout=10)
    (entry,) = rig.journal.load_all()
    assert entry.result == {"deployment_id": "d-1", "action": "up", "success": True}
    assert json.loads(next(rig.journal.directory.glob("*.json")).read_text())["state"] == "finished"
