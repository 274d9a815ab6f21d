"""Compose ``--progress json`` parsing on recorded v2.40.3 and v5.6.1 output (tests/fixtures)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from actors.deploy.progress import (
    Progress,
    ProgressTracker,
    parse_line,
    stage_of,
)
from messages.deploy import STAGES

FIXTURES = Path(__file__).parent / "fixtures" / "compose"
VERSIONS = ("v2", "v5")


def lines(version: str, name: str) -> list[str]:
    return (FIXTURES / version / f"{name}.jsonl").read_text().splitlines()


def feed(
    version: str, name: str, phase: str, *, step: float = 1.0
) -> tuple[ProgressTracker, list[Progress]]:
    """All lines of a recording, ``step`` seconds apart (1 s: nothing is throttled)."""
    tracker = ProgressTracker(phase=phase)
    out: list[Progress] = []
    for i, raw in enumerate(lines(version, name)):
        out += tracker.feed(raw, now=i * step)
    return tracker, out


def test_every_recorded_line_parses_to_a_known_kind() -> None:
    files = sorted(FIXTURES.glob("v*/*.jsonl"))
    assert len(files) == 28
    for path in files:
        for raw in path.read_text().splitlines():
            line = parse_line(raw)
            assert line is not None, (path.name, raw)
            assert line.kind in ("resource", "layer", "error", "log"), (path.name, raw)
            if line.kind == "resource":
                assert line.resource in ("Container", "Network", "Volume", "Image", "Service")
                assert line.name and line.word, raw


@pytest.mark.parametrize("version", VERSIONS)
def test_up_with_a_volume(version: str) -> None:
    tracker, out = feed(version, "up-volume", "up")
    assert [p.stage for p in out if p.message.startswith("Volume")] == ["creating_volumes"] * 2
    containers = [p for p in out if p.message.startswith("Container")]
    assert {p.message for p in containers} == {
        f"Container s1-{svc}-1: {word}"
        for svc in ("web", "job")
        for word in ("Creating", "Created", "Starting", "Started")
    }
    stages = {p.message.rsplit(": ", 1)[1]: p.stage for p in containers}
    assert stages == {
        "Creating": "creating",
        "Created": "creating",
        "Starting": "starting",
        "Started": "starting",
    }
    assert tracker.error_text() == "" and not tracker.failures
    assert all(p.stage in STAGES for p in out)


@pytest.mark.parametrize("version", VERSIONS)
def test_v5_duplicate_lines_are_sent_once(version: str) -> None:
    _, out = feed(version, "up-volume", "up")
    messages = [p.message for p in out]
    assert messages.count("Volume s1_data: Creating") == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_down_is_executing(version: str) -> None:
    for name in ("down-volume", "down-network"):
        _, out = feed(version, name, "down")
        assert out and {p.stage for p in out} == {"executing"}
    _, out = feed(version, "down-network", "down")
    assert "Network s2_inner: Removed" in [p.message for p in out]


@pytest.mark.parametrize("version", VERSIONS)
def test_force_recreate_and_unchanged(version: str) -> None:
    _, out = feed(version, "up-force-recreate", "up")
    assert "Container s1-web-1: Recreated" in [p.message for p in out]
    _, out = feed(version, "up-unchanged", "up")
    assert any(p.message.endswith(("Started", "Running")) for p in out)


@pytest.mark.parametrize("version", VERSIONS)
def test_network_and_healthy_dependency(version: str) -> None:
    _, out = feed(version, "up-healthy-dependency", "up")
    assert ("creating_networks", "Network s2_inner: Created") in [(p.stage, p.message) for p in out]
    assert ("starting", "Container s2-app-1: Healthy") in [(p.stage, p.message) for p in out]


@pytest.mark.parametrize("version", VERSIONS)
def test_pull_layers_are_aggregated_per_image(version: str) -> None:
    tracker, out = feed(version, "pull-layers", "pull")
    assert out and all(p.stage == "pulling_image" for p in out)
    image = "image 127.0.0.1:5000/big:v1" if version == "v5" else "the image of big"
    progress = [p.message for p in out if p.message.startswith(f"Pulling {image}:")]
    assert progress[-1] == f"Pulling {image}: 100% (3/3 layers done)"
    percents = [int(m.split(": ")[1].split("%")[0]) for m in progress]
    assert percents == sorted(percents) and percents[0] < 50
    assert tracker.error_text() == ""


@pytest.mark.parametrize("version", VERSIONS)
def test_pull_progress_is_throttled_to_four_per_second(version: str) -> None:
    tracker = ProgressTracker(phase="pull")
    sent: list[tuple[float, Progress]] = []
    for i, raw in enumerate(lines(version, "pull-layers") * 5):
        now = i * 0.01  # 100 lines a second
        sent += [(now, p) for p in tracker.feed(raw, now)]
    layer_updates = [t for t, p in sent if "%" in p.message]
    assert layer_updates
    for a, b in itertools.pairwise(layer_updates):
        assert b - a >= 0.25 - 1e-9
    # milestones (Pulling/Pulled) are never dropped
    milestones = [p.message for _, p in sent if "%" not in p.message]
    assert any(m.endswith("Pulled") for m in milestones)


@pytest.mark.parametrize("version", VERSIONS)
def test_pull_without_credentials_keeps_the_registry_error(version: str) -> None:
    tracker, out = feed(version, "pull-no-credentials", "pull")
    assert tracker.error_text() == (
        'Error response from daemon: Head "http://127.0.0.1:5000/v2/bb/manifests/v1": '
        "no basic auth credentials"
    )
    assert any("no basic auth credentials" in f for f in tracker.failures)
    assert all(p.stage == "pulling_image" for p in out)


@pytest.mark.parametrize("version", VERSIONS)
def test_errors_are_compose_own_words(version: str) -> None:
    expected = {
        "up-start-error": 'exec: "/nonexistent": stat /nonexistent: no such file or directory',
        "up-invalid-key": "validating /data/stacks/e1/docker-compose.yml: services.a",
        "up-bad-yaml": "failed to parse /data/stacks/e1/docker-compose.yml",
        "up-unhealthy-dependency": "dependency failed to start: container e1-a-1 is unhealthy",
        "up-missing-bind-source": "bind source path does not exist: /srv/stacks/ov/missing/s.txt",
    }
    for name, text in expected.items():
        tracker, _ = feed(version, name, "up")
        assert text in tracker.error_text(), (name, tracker.error_text())
        assert "exit status" not in tracker.error_text()


@pytest.mark.parametrize("version", VERSIONS)
def test_resource_errors_are_failures(version: str) -> None:
    tracker, out = feed(version, "up-missing-bind-source", "up")
    assert tracker.failures and "bind source path does not exist" in tracker.failures[0]
    assert any("Error" in p.message for p in out)


@pytest.mark.parametrize("version", VERSIONS)
def test_warnings_are_forwarded(version: str) -> None:
    tracker, out = feed(version, "up-warnings", "up")
    assert (
        tracker.warnings[0] == 'The "UNSET_VAR" variable is not set. Defaulting to a blank string.'
    )
    assert out[0].message.startswith('warning: The "UNSET_VAR" variable')
    assert tracker.error_text() == ""


def test_stage_mapping_rules() -> None:
    def stage(raw: str, phase: str = "up") -> str | None:
        line = parse_line(raw)
        assert line is not None
        return stage_of(line, phase)

    assert stage('{"id":"Image nginx:1","status":"Working","text":"Pulling"}') == "pulling_image"
    assert stage('{"id":"web","text":"Pulling"}') == "pulling_image"
    assert stage('{"id":"web","text":"Pulled"}', "pull") == "pulling_image"
    assert stage('{"id":"Network n","status":"Creating"}') == "creating_networks"
    assert stage('{"id":"Volume v","status":"Done","text":"Created"}') == "creating_volumes"
    assert stage('{"id":"Container c","status":"Recreate"}') == "creating"
    assert stage('{"id":"Container c","status":"Waiting"}') == "starting"
    assert stage('{"id":"Container c","status":"Stopping"}', "down") == "executing"
    assert stage('{"error":true,"message":"x"}') is None


def test_odd_lines_never_raise() -> None:
    tracker = ProgressTracker(phase="up")
    for raw in ("", "   ", "not json", "[1,2]", '{"id":7}', '{"status":"x"}', "{", '"str"'):
        tracker.feed(raw, 0.0)
    assert tracker.texts == ["not json", "[1,2]", '{"id":7}', '{"status":"x"}', "{", '"str"']
    assert tracker.error_text() == '[1,2]; {"id":7}; {"status":"x"}; {; "str"'  # the last 5
    long = ProgressTracker(phase="up")
    (p,) = long.feed('{"id":"Container c","status":"Error","text":"' + "x " * 900 + '"}', 0)
    assert len(p.message) <= 1000
