"""Pure logic of update_container: config building, networks, health rules, pull progress,
journal files, event validators. No Docker, no threads."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from actors.flows import update_config as uc
from actors.flows.container_update import Journal
from actors.flows.pull_progress import MAX_TRACKED_LAYERS, PullError, PullProgress
from tests.support.hub_events import (
    update_complete_problem,
    update_layer_progress_problem,
    update_progress_problem,
)

OLD_ID = "a" * 64
IMAGE_CFG: dict[str, Any] = {
    "Labels": {"org.version": "1", "vendor": "acme"},
    "Env": ["PATH=/usr/bin:/bin", "MODE=prod"],
    "Cmd": ["serve"],
    "Entrypoint": None,
    "WorkingDir": "/app",
    "User": "",
    "Healthcheck": {"Test": ["CMD", "true"]},
    "ExposedPorts": {"80/tcp": {}},
    "Volumes": {"/data": {}},
}


def _old(**over: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "Hostname": "aaaaaaaaaaaa",
        "Image": "reg/app:v1",
        "Labels": {"org.version": "1", "vendor": "mine", "user.label": "x"},
        "Env": ["PATH=/usr/bin:/bin", "MODE=dev", "EXTRA=1"],
        "Cmd": ["serve"],
        "Entrypoint": None,
        "WorkingDir": "/app",
        "User": "",
        "Healthcheck": {"Test": ["CMD", "true"]},
        "ExposedPorts": {"80/tcp": {}, "9000/tcp": {}},
        "Volumes": {"/data": {}},
        "StopSignal": "SIGTERM",
    }
    host = {
        "NetworkMode": "appnet",
        "Binds": ["/srv/conf:/conf:ro"],
        "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
        "PortBindings": {"80/tcp": [{"HostPort": "8080"}]},
        "NanoCpus": 500_000_000,
        "MemorySwappiness": None,
    }
    inspect = {
        "Id": OLD_ID,
        "Name": "/web",
        "Image": "sha256:" + "b" * 64,
        "Config": config,
        "HostConfig": host,
        "State": {"Running": True},
        "Mounts": [
            {"Type": "bind", "Source": "/srv/conf", "Destination": "/conf", "RW": False},
            {"Type": "volume", "Name": "f" * 64, "Destination": "/data", "RW": True},
        ],
        "NetworkSettings": {
            "Networks": {
                "appnet": {
                    "IPAMConfig": {"IPv4Address": "198.18.0.10"},
                    "Aliases": ["web-alias", OLD_ID[:12]],
                    "Links": None,
                },
                "backnet": {"IPAMConfig": None, "Aliases": [OLD_ID[:12]], "Links": None},
                "bridge": {"Aliases": None},
            }
        },
    }
    inspect.update(over)
    return inspect


def test_plan_is_a_full_copy_with_image_defaults_filtered() -> None:
    old = _old()
    plan = uc.build_plan(old, {"Config": IMAGE_CFG}, "reg/app:v2")
    body = plan.create_body(False)
    assert plan.name == "web"
    assert body["Image"] == "reg/app:v2"
    assert body["Labels"] == {"vendor": "mine", "user.label": "x"}  # org.version came from image
    assert body["Env"] == ["MODE=dev", "EXTRA=1"]  # PATH identical to image: new image's applies
    assert body["Cmd"] is None and body["Entrypoint"] is None  # inherited: new image's apply
    assert body["Healthcheck"] is None and body["WorkingDir"] == ""
    assert body["ExposedPorts"] == {"9000/tcp": {}}
    assert body["Volumes"] is None
    assert body["Hostname"] == "aaaaaaaaaaaa"  # everything else copied verbatim
    assert body["StopSignal"] == "SIGTERM"
    host = body["HostConfig"]
    assert host["RestartPolicy"] == {"Name": "unless-stopped", "MaximumRetryCount": 0}
    assert host["PortBindings"] == {"80/tcp": [{"HostPort": "8080"}]}
    assert host["NanoCpus"] == 500_000_000
    # the anonymous volume behind VOLUME /data is re-attached, the bind kept
    assert host["Binds"] == ["/srv/conf:/conf:ro", f"{'f' * 64}:/data"]
    assert old["Config"]["Labels"]["org.version"] == "1"  # the input is not mutated
    assert "NetworkingConfig" not in body


def test_user_overrides_are_kept() -> None:
    old = _old()
    old["Config"].update(
        Cmd=["serve", "--debug"], WorkingDir="/srv", Healthcheck={"Test": ["NONE"]}, User="1000"
    )
    body = uc.build_plan(old, {"Config": IMAGE_CFG}, "x").create_body(False)
    assert body["Cmd"] == ["serve", "--debug"] and body["Entrypoint"] is None
    assert body["WorkingDir"] == "/srv" and body["User"] == "1000"
    assert body["Healthcheck"] == {"Test": ["NONE"]}
    old["Config"]["Entrypoint"] = ["/bin/custom"]
    body = uc.build_plan(old, {"Config": IMAGE_CFG}, "x").create_body(False)
    assert body["Entrypoint"] == ["/bin/custom"] and body["Cmd"] == ["serve", "--debug"]


def test_labels_and_env_filter_exactly_matching_pairs() -> None:
    assert uc.filter_labels({"a": "1", "b": "2", "c": "3"}, {"a": "1", "b": "x"}) == {
        "b": "2",
        "c": "3",
    }
    assert uc.filter_labels(None, {"a": "1"}) == {}
    assert uc.filter_env(["A=1", "B=2", "C=3"], ["A=1", "B=9"]) == ["B=2", "C=3"]
    assert uc.filter_env(None, None) == []


def test_without_old_image_nothing_is_filtered() -> None:
    body = uc.build_plan(_old(), {}, "x").create_body(False)
    assert body["Labels"]["org.version"] == "1"
    assert "PATH=/usr/bin:/bin" in body["Env"]
    assert body["Cmd"] == ["serve"]


def test_networks_primary_endpoint_and_extras() -> None:
    plan = uc.build_plan(_old(), {"Config": IMAGE_CFG}, "x")
    nets = plan.networks
    assert nets.primary == "appnet"
    assert nets.primary_endpoint == {
        "IPAMConfig": {"IPv4Address": "198.18.0.10"},
        "Aliases": ["web-alias"],
    }
    assert nets.extra == (("backnet", {}),)  # bridge ignored, auto alias dropped
    assert plan.create_body(True)["NetworkingConfig"] == {
        "EndpointsConfig": {"appnet": nets.primary_endpoint}
    }
    assert "NetworkingConfig" not in plan.create_body(False)


def test_primary_without_settings_is_not_passed_and_bridge_mode_picks_a_custom_one() -> None:
    old = _old()
    old["HostConfig"]["NetworkMode"] = "bridge"
    old["NetworkSettings"]["Networks"]["appnet"] = {"Aliases": [OLD_ID[:12]]}
    nets = uc.plan_networks(old)
    assert nets.primary == "appnet" and nets.primary_endpoint is None
    assert "NetworkingConfig" not in uc.build_plan(old, {}, "x").create_body(True)


def test_user_alias_of_twelve_chars_is_kept() -> None:
    ep = {"Aliases": ["database-001", OLD_ID[:12]], "Links": ["db:db"]}
    assert uc.endpoint_settings(ep, OLD_ID) == {"Aliases": ["database-001"], "Links": ["db:db"]}


@pytest.mark.parametrize("mode", ["host", "none", "container:" + "c" * 64])
def test_special_network_modes_have_no_network_plan(mode: str) -> None:
    old = _old()
    old["HostConfig"]["NetworkMode"] = mode
    assert uc.plan_networks(old) == uc.NetworkPlan()


def test_container_network_mode_clears_identity_and_uses_the_name() -> None:
    old = _old()
    old["HostConfig"]["NetworkMode"] = "container:" + "c" * 64
    body = uc.build_plan(old, {}, "x", network_mode_name="vpn").create_body(True)
    assert body["HostConfig"]["NetworkMode"] == "container:vpn"
    assert body["Hostname"] == "" and body["Domainname"] == "" and body["MacAddress"] == ""
    assert body["ExposedPorts"] is None and body["HostConfig"]["PortBindings"] is None


def test_podman_fixes() -> None:
    host = {"NanoCpus": 1_500_000_000, "MemorySwappiness": 60}
    uc.apply_podman_fixes(host)
    assert host == {"NanoCpus": 0, "CpuPeriod": 100_000, "CpuQuota": 150_000}
    body = uc.build_plan(_old(), {}, "x", podman=True).create_body(False)
    assert "MemorySwappiness" not in body["HostConfig"]


def test_dependents_detection_and_plan() -> None:
    dep = {"HostConfig": {"NetworkMode": "container:web"}}
    assert uc.depends_on(dep, "web", OLD_ID)
    assert uc.depends_on({"HostConfig": {"NetworkMode": f"container:{OLD_ID}"}}, "web", OLD_ID)
    assert uc.depends_on({"HostConfig": {"NetworkMode": f"container:{OLD_ID[:12]}"}}, "x", OLD_ID)
    assert not uc.depends_on({"HostConfig": {"NetworkMode": "container:other"}}, "web", OLD_ID)
    assert not uc.depends_on({"HostConfig": {"NetworkMode": "appnet"}}, "web", OLD_ID)
    full = {
        "Name": "/side",
        "Config": {"Image": "side:1", "Labels": {"l": "1"}, "Env": ["A=1"], "Hostname": "h"},
        "HostConfig": {"NetworkMode": f"container:{OLD_ID}", "PortBindings": {}},
    }
    plan = uc.dependent_plan(full, "n" * 64)
    body = plan.create_body(True)
    assert plan.name == "side"
    assert body["Image"] == "side:1" and body["Labels"] == {"l": "1"} and body["Env"] == ["A=1"]
    assert body["HostConfig"]["NetworkMode"] == "container:" + "n" * 64
    assert body["Hostname"] == ""


def test_api_version_threshold() -> None:
    assert uc.api_version_at_least("1.44", (1, 44))
    assert uc.api_version_at_least("1.47", (1, 44))
    assert not uc.api_version_at_least("1.41", (1, 44))
    assert not uc.api_version_at_least("garbage", (1, 44))


# ---------------------------------------------------------------- health gate


def _state(running: bool = True, **kw: Any) -> dict[str, Any]:
    policy = kw.pop("policy", "")
    return {
        "State": {"Running": running, **kw},
        "HostConfig": {"RestartPolicy": {"Name": policy}},
    }


@pytest.mark.parametrize(
    ("policy", "code", "ok"),
    [
        ("", 0, True),
        ("no", 0, True),
        ("on-failure", 0, True),
        ("no", 1, False),
        ("on-failure", 2, False),
        ("always", 0, False),
        ("unless-stopped", 0, False),
    ],
)
def test_exit_rules(policy: str, code: int, ok: bool) -> None:
    assert uc.exit_acceptable(policy, code) is ok
    verdict = uc.judge_health(_state(False, ExitCode=code, policy=policy), 0.5, 60).verdict
    assert verdict is (uc.Verdict.PASS if ok else uc.Verdict.FAIL)


def test_restarting_counts_as_failed_even_though_docker_says_running() -> None:
    decision = uc.judge_health(_state(True, Restarting=True, ExitCode=3, policy="always"), 1, 60)
    assert decision.verdict is uc.Verdict.FAIL and "exit code: 3" in decision.reason


def test_a_restart_loop_caught_while_running_fails() -> None:
    looping = {**_state(True, ExitCode=0, policy="always"), "RestartCount": 2}
    decision = uc.judge_health(looping, 3, 60, stable=True)
    assert decision.verdict is uc.Verdict.FAIL and "restarted 2 time(s)" in decision.reason


def test_without_healthcheck_a_stability_wait_then_running_passes() -> None:
    assert uc.judge_health(_state(), 0, 60).verdict is uc.Verdict.STABILITY
    assert uc.judge_health(_state(), 3, 60, stable=True).verdict is uc.Verdict.PASS


def test_healthcheck_grace_period_for_unhealthy() -> None:
    unhealthy = _state(Health={"Status": "unhealthy"})
    assert uc.grace_period(10) == 5 and uc.grace_period(120) == 30
    assert uc.judge_health(unhealthy, 4.9, 10).verdict is uc.Verdict.WAIT
    decision = uc.judge_health(unhealthy, 5.0, 10)
    assert decision.verdict is uc.Verdict.FAIL and decision.reason == "container is unhealthy"
    assert uc.judge_health(unhealthy, 29, 120).verdict is uc.Verdict.WAIT
    assert uc.judge_health(unhealthy, 30, 120).verdict is uc.Verdict.FAIL
    healthy = _state(Health={"Status": "healthy"})
    assert uc.judge_health(healthy, 0, 10).verdict is uc.Verdict.PASS
    starting = _state(Health={"Status": "starting"})
    assert uc.judge_health(starting, 9, 10).verdict is uc.Verdict.WAIT
    late = uc.judge_health(starting, 10, 10)
    assert late.verdict is uc.Verdict.FAIL and "timeout" in late.reason


# ---------------------------------------------------------------- pull progress


def _line(layer: str, status: str, current: int = 0, total: int = 0) -> dict[str, Any]:
    return {"id": layer, "status": status, "progressDetail": {"current": current, "total": total}}


def test_pull_progress_shape_throttle_and_speed() -> None:
    p = PullProgress("3f9a1b2c4d5e", now=0.0)
    assert p.feed({"status": "Pulling from app", "id": "v2"}, 0.0) is None
    first = p.feed(_line("l1", "Pulling fs layer"), 0.0)
    assert first is not None and first["total_layers"] == 1
    assert p.feed(_line("l2", "Waiting"), 0.1) is None  # throttled: <500 ms, no progress move
    event = p.feed(_line("l1", "Downloading", 1 * 2**20, 4 * 2**20), 0.2)
    assert event is not None  # moved 20 points
    assert event["overall_progress"] == 25
    assert [la["id"] for la in event["layers"]] == ["l1", "l2"]  # Downloading before Waiting
    assert event["summary"] == "Downloading 1 of 2 layers (25%)"
    assert update_layer_progress_problem(event) is None
    assert p.feed(_line("l1", "Downloading", int(1.1 * 2**20), 4 * 2**20), 0.3) is None
    event = p.feed(_line("l1", "Downloading", 3 * 2**20, 4 * 2**20), 1.2)  # first sample
    assert event is not None and event["speed_mbps"] == pytest.approx(
        2.5, abs=0.01
    )  # 3 MiB in 1.2 s
    done = p.feed(_line("l1", "Pull complete"), 1.3)  # completion always emits
    assert done is not None and done["layers"][0]["percent"] == 100
    cached = p.feed(_line("l2", "Already exists"), 1.35)
    assert cached is not None and cached["summary"] == "Pull complete (2 layers, 1 cached)"


def test_pull_progress_truncates_to_twenty_layers() -> None:
    p = PullProgress("3f9a1b2c4d5e", now=0.0)
    event = None
    for i in range(25):
        event = p.feed(_line(f"l{i:02}", "Pull complete" if i % 2 else "Waiting"), 10.0 * i)
    assert event is not None
    assert len(event["layers"]) == 20 and event["remaining_layers"] == 5
    assert event["total_layers"] == 25
    assert update_layer_progress_problem(event) is None


def test_in_band_pull_error_raises() -> None:
    p = PullProgress("3f9a1b2c4d5e", now=0.0)
    with pytest.raises(PullError, match="manifest unknown"):
        p.feed({"error": "manifest unknown", "errorDetail": {"message": "manifest unknown"}}, 0)
    with pytest.raises(PullError, match="denied"):
        p.feed({"errorDetail": {"message": "denied"}}, 0)


def test_pull_progress_work_and_memory_are_bounded_by_the_layers_it_follows() -> None:
    """A hostile stream naming 100,000 layers: followed are at most MAX_TRACKED_LAYERS, and the
    running totals always equal a full recount."""
    p = PullProgress("3f9a1b2c4d5e", now=0.0)
    for n in range(100_000):
        line = {
            "status": "Downloading" if n % 3 else "Pull complete",
            "id": f"layer{n % 150_000}",
            "progressDetail": {"current": n % 97, "total": 100 if n % 5 else "junk"},
        }
        p.feed(line, now=n / 1000)
    assert len(p._layers) == MAX_TRACKED_LAYERS
    layers = [la for la in p._layers.values() if la.total > 0]
    assert p._downloaded() == (sum(la.current for la in layers), sum(la.total for la in layers))
    assert p.payload()["total_layers"] == MAX_TRACKED_LAYERS


# ---------------------------------------------------------------- journal


def test_journal_is_atomic_private_and_locked(tmp_path: Path) -> None:
    directory = tmp_path / "updates"
    journal = Journal.acquire(directory, "3f9a1b2c4d5e")
    assert journal is not None
    journal.save(phase="backup", old_id=OLD_ID)
    journal.save(new_id="n")
    assert stat.S_IMODE(journal.path.stat().st_mode) == 0o600
    assert not [p for p in os.listdir(directory) if p.endswith(".tmp") or ".tmp-" in p]
    # a second holder (another flow, or recovery) is refused while the first one lives
    assert Journal.acquire(directory, "3f9a1b2c4d5e") is None
    journal.release()
    again = Journal.acquire(directory, "3f9a1b2c4d5e")
    assert again is not None
    assert again.load() == {"phase": "backup", "old_id": OLD_ID, "new_id": "n"}
    again.discard()
    assert again.load() is None
    again.release()


def test_unreadable_journal_is_left_alone(tmp_path: Path) -> None:
    journal = Journal.acquire(tmp_path, "k")
    assert journal is not None
    journal.path.write_text("{not json")
    assert journal.load() is None
    assert journal.path.exists()
    journal.release()


# ---------------------------------------------------------------- validators


def test_validators_reject_malformed_update_events() -> None:
    good = {"container_id": "3f9a1b2c4d5e", "stage": "pulling", "message": "Pulling image x"}
    assert update_progress_problem(good) is None
    assert update_progress_problem({**good, "stage": "downloading"}) is not None
    assert update_progress_problem({**good, "container_id": "3f9a1b2c4d5e00"}) is not None
    assert update_progress_problem({**good, "extra": 1}) is not None
    done = {"old_container_id": "3f9a1b2c4d5e", "new_container_id": "0123456789ab"}
    assert update_complete_problem({**done, "container_name": "web"}) is None
    assert update_complete_problem({**done, "container_name": "web", "failed_dependents": []})
    assert (
        update_complete_problem({**done, "container_name": "web", "failed_dependents": ["s"]})
        is None
    )
    assert update_complete_problem({**done, "container_name": "web", "new_container_id": "x"})
    named = {**done, "container_name": "web", "old_container_id": "web"}
    assert "12-char hex" in str(update_complete_problem(named))
