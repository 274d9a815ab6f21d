"""Service classification rules (actors/deploy/classify.py), without Docker."""

from __future__ import annotations

import dataclasses

from actors.deploy.classify import (
    ContainerState,
    Verdict,
    go_healthy,
    judge,
    judge_all,
    outcome_payload,
    parse_docker_time,
    service_entry,
    settled,
)

NOW = 1_800_000_000.0
SETTLE = 3.0


def state(**kw: object) -> ContainerState:
    base = ContainerState(
        id="3f9a1b2c4d5e" + "0" * 52,
        name="site-web-1",
        service="web",
        image="nginx:1.27",
        status="Up 5 seconds",
        state="running",
        started_at=NOW - 10,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def verdict(c: ContainerState, *, waiting: bool = False, baseline: int = 0) -> Verdict:
    return judge(c, baseline_restarts=baseline, now=NOW, settle_s=SETTLE, waiting=waiting).verdict


def test_go_status_rule() -> None:
    for text in ("running", "up", "Up 3 minutes", "Up 3 minutes (healthy)", "healthy"):
        assert go_healthy(text), text
    for text in ("Up 3 minutes (unhealthy)", "Exited (0) 2 seconds ago", "Restarting (1)", ""):
        assert not go_healthy(text), text


def test_running_containers() -> None:
    assert verdict(state()) is Verdict.OK
    assert verdict(state(started_at=NOW - 1)) is Verdict.PENDING  # not up for the settle window
    assert verdict(state(health="healthy", started_at=NOW)) is Verdict.OK
    assert verdict(state(health="unhealthy")) is Verdict.FAILED
    assert verdict(state(health="unhealthy"), waiting=True) is Verdict.PENDING  # may recover
    # health still starting: waits only when asked to (Go calls "Up 2s (health: starting)" up)
    assert verdict(state(health="starting"), waiting=True) is Verdict.PENDING
    assert verdict(state(health="starting"), waiting=False) is Verdict.OK
    assert verdict(state(state="paused")) is Verdict.FAILED
    assert verdict(state(state="created", status="Created")) is Verdict.PENDING


def test_one_shot_jobs_that_exit_zero_are_done() -> None:
    """Better than Go: with wait_for_healthy a finished job does not wait the health timeout."""
    for policy in ("", "no", "on-failure"):
        done = state(state="exited", status="Exited (0) 1 second ago", restart_policy=policy)
        assert verdict(done, waiting=True) is Verdict.OK
    for policy in ("always", "unless-stopped"):
        c = state(state="exited", status="Exited (0) 1 second ago", restart_policy=policy)
        assert verdict(c) is Verdict.FAILED
    failed = state(state="exited", status="Exited (1) 1 second ago", exit_code=1)
    j = judge(failed, baseline_restarts=0, now=NOW, settle_s=SETTLE, waiting=True)
    assert (j.verdict, j.reason) == (Verdict.FAILED, "exited with code 1")
    oom = state(state="exited", exit_code=137, oom_killed=True)
    assert verdict(oom) is Verdict.FAILED


def test_crash_loop_is_failed_even_when_caught_up() -> None:
    """Better than Go: a restart: always container that is up between two crashes has failed."""
    between_crashes = state(
        status="Up Less than a second", restart_policy="always", restart_count=4
    )
    assert go_healthy(between_crashes.status)  # what a single snapshot would conclude
    j = judge(between_crashes, baseline_restarts=0, now=NOW, settle_s=SETTLE, waiting=False)
    assert j.verdict is Verdict.FAILED
    assert j.reason == "crash loop: restarted 4 times since the deploy"
    restarting = state(state="restarting", status="Restarting (1) 1 second ago", exit_code=1)
    j = judge(restarting, baseline_restarts=0, now=NOW, settle_s=SETTLE, waiting=True)
    assert (j.verdict, j.reason) == (
        Verdict.FAILED,
        "crash loop: restarted again since the deploy, last exit code 1",
    )
    # restarts from before the deploy (an unchanged container) do not count
    assert verdict(state(restart_count=4), baseline=4) is Verdict.OK


def test_judge_all_one_outcome_per_service_and_oneoff_ignored() -> None:
    web1 = state()
    web2 = state(id="b" * 64, name="site-web-2", number=2, state="exited", exit_code=2)
    db = state(id="c" * 64, name="site-db-1", service="db")
    run = state(id="d" * 64, name="site-web-run-1", oneoff=True, state="exited", exit_code=1)
    outcomes = judge_all(
        [web1, web2, db, run], baselines={}, now=NOW, settle_s=SETTLE, waiting=False
    )
    assert [(o.service, o.container.name, o.judgement.verdict) for o in outcomes] == [
        ("db", "site-db-1", Verdict.OK),
        ("web", "site-web-2", Verdict.FAILED),  # the worst replica speaks for the service
    ]
    assert settled(outcomes)
    pending = judge_all(
        [state(started_at=NOW)], baselines={}, now=NOW, settle_s=SETTLE, waiting=False
    )
    assert not settled(pending)


def test_service_entry_fields() -> None:
    (o,) = judge_all([state()], baselines={}, now=NOW, settle_s=SETTLE, waiting=False)
    assert service_entry(o) == {
        "container_id": "3f9a1b2c4d5e",
        "container_name": "site-web-1",
        "image": "nginx:1.27",
        "status": "Up 5 seconds",
    }
    db = state(
        service="db",
        name="site-db-1",
        state="exited",
        status="Exited (1) 2 seconds ago",
        restart_policy="always",
        exit_code=1,
    )
    (o,) = judge_all([db], baselines={}, now=NOW, settle_s=SETTLE, waiting=False)
    assert service_entry(o) == {
        "container_id": "3f9a1b2c4d5e",
        "container_name": "site-db-1",
        "image": "nginx:1.27",
        "status": "Exited (1) 2 seconds ago",
        "restart_policy": "always",
        "exit_code": 1,
    }
    # a crash loop caught between restarts is not reported as "Up"
    loop = state(
        status="Up Less than a second", restart_policy="always", restart_count=2, exit_code=3
    )
    (o,) = judge_all([loop], baselines={}, now=NOW, settle_s=SETTLE, waiting=False)
    assert service_entry(o)["status"] == (
        "Restarting (3) (crash loop: restarted 2 times since the deploy, last exit code 3)"
    )


def test_outcomes_use_the_backend_error_texts() -> None:
    web = state()
    db = state(
        id="1" * 64,
        service="db",
        name="site-db-1",
        state="exited",
        status="Exited (1) 2 seconds ago",
        exit_code=1,
        restart_policy="always",
    )
    both = judge_all([web, db], baselines={}, now=NOW, settle_s=SETTLE, waiting=False)
    partial = outcome_payload("d-1", "up", both)
    assert partial["success"] is False and partial["partial_success"] is True
    assert partial["failed_services"] == ["db"]
    assert partial["error"] == (
        "Partial deployment: 1/2 services running. Failed: db: Exited (1) 2 seconds ago "
        "(exited with code 1)"
    )
    assert set(partial["services"]) == {"web", "db"}
    assert list(partial) == [
        "deployment_id",
        "action",
        "success",
        "partial_success",
        "services",
        "failed_services",
        "error",
    ]

    db2 = dataclasses.replace(db, id="2" * 64, service="cache", name="site-cache-1")
    none_ok = judge_all([db, db2], baselines={}, now=NOW, settle_s=SETTLE, waiting=False)
    failed = outcome_payload("d-1", "restart", none_ok)
    assert failed["success"] is False and "partial_success" not in failed
    assert failed["action"] == "restart"
    assert failed["error"] == (
        "All services failed to start: cache: Exited (1) 2 seconds ago (exited with code 1); "
        "db: Exited (1) 2 seconds ago (exited with code 1)"
    )

    ok = outcome_payload(
        "d-1", "up", judge_all([web], baselines={}, now=NOW, settle_s=1, waiting=False)
    )
    assert ok == {
        "deployment_id": "d-1",
        "action": "up",
        "success": True,
        "services": {
            "web": service_entry(
                judge_all([web], baselines={}, now=NOW, settle_s=1, waiting=False)[0]
            )
        },
    }
    # no services at all (everything behind an inactive profile) is a success, Go's rule
    assert outcome_payload("d-1", "up", []) == {
        "deployment_id": "d-1",
        "action": "up",
        "success": True,
    }


def test_pending_at_the_deadline_is_a_failure_with_the_reason() -> None:
    slow = state(health="starting", status="Up 60 seconds (health: starting)")
    outcomes = judge_all([slow], baselines={}, now=NOW, settle_s=SETTLE, waiting=True)
    payload = outcome_payload("d", "up", outcomes, timed_out=True)
    assert payload["error"] == (
        "All services failed to start: web: Up 60 seconds (health: starting) "
        "(not ready within the health timeout (health: starting))"
    )


def test_from_docker() -> None:
    summary = {
        "Id": "ab" * 32,
        "Names": ["/site-db-1"],
        "Image": "postgres:16",
        "Status": "Restarting (1) 2 seconds ago",
        "State": "restarting",
        "Labels": {
            "com.docker.compose.project": "site",
            "com.docker.compose.service": "db",
            "com.docker.compose.container-number": "1",
            "com.docker.compose.oneoff": "False",
        },
    }
    inspect = {
        "Id": "ab" * 32,
        "RestartCount": 3,
        "Config": {"Image": "postgres:16"},
        "HostConfig": {"RestartPolicy": {"Name": "always", "MaximumRetryCount": 0}},
        "State": {
            "Status": "restarting",
            "ExitCode": 1,
            "OOMKilled": False,
            "StartedAt": "2026-07-13T20:01:02.123456789Z",
            "Health": {"Status": "unhealthy"},
        },
    }
    c = ContainerState.from_docker(summary, inspect)
    assert (c.name, c.service, c.image, c.state, c.exit_code) == (
        "site-db-1",
        "db",
        "postgres:16",
        "restarting",
        1,
    )
    assert (c.restart_policy, c.restart_count, c.health, c.oneoff) == (
        "always",
        3,
        "unhealthy",
        False,
    )
    assert c.started_at == parse_docker_time("2026-07-13T20:01:02.123456Z")
    assert parse_docker_time("0001-01-01T00:00:00Z") is None
    assert parse_docker_time("garbage") is None
