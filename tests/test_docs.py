"""README and deploy/ must say what the code does: generated parts are compared, not trusted."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

import agent_config
from tests.support.hostenv import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def test_readme_settings_table_is_generated_from_the_code() -> None:
    match = re.search(r"<!-- settings:begin -->\n(.*?)\n<!-- settings:end -->", README, re.S)
    assert match, "README.md lacks the <!-- settings:begin/end --> markers"
    assert match.group(1) == agent_config.settings_markdown(), (
        "README settings table is stale: regenerate it with "
        "python -c 'import agent_config; print(agent_config.settings_markdown())'"
    )


def test_example_yaml_is_generated_and_every_line_is_a_valid_setting(tmp_path: Path) -> None:
    example = (REPO_ROOT / "deploy" / "agent.example.yaml").read_text()
    assert example == agent_config.example_yaml(), "regenerate deploy/agent.example.yaml"
    # uncomment every setting that has a value, plus the policy block: it must load
    lines = []
    for line in example.splitlines():
        body = line[2:] if line.startswith("# ") else ""
        if re.match(r"^[a-z_]+: \S", body) or body.startswith(("policy:", "  ")):
            lines.append(body.split("  #")[0].rstrip())
    path = tmp_path / "agent.yaml"
    path.write_text("\n".join(["dockmon_url: https://dockmon.example.com", *lines]) + "\n")
    cfg = agent_config.load_config({}, config_path=str(path))
    assert cfg.policy.deny == {"shell_session"}
    assert cfg.policy.protected_names == ("dockmon*", "db-*")


def test_compose_file_is_valid_and_uses_the_healthcheck() -> None:
    compose = yaml.safe_load((REPO_ROOT / "deploy" / "docker-compose.yml").read_text())
    agent = compose["services"]["agent"]
    assert agent["healthcheck"]["test"] == ["CMD", "dockmon-agent", "healthcheck"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in agent["volumes"]
    assert "dockmon-agent-data:/data" in agent["volumes"]
    assert agent["restart"] == "unless-stopped"


def test_compose_file_never_guesses_the_sockets_group() -> None:
    """No hard-coded group (999 is wrong on most hosts): found by the entrypoint, or required."""
    text = (REPO_ROOT / "deploy" / "docker-compose.yml").read_text()
    agent = yaml.safe_load(text)["services"]["agent"]
    assert "group_add" not in agent and "user" not in agent  # the entrypoint finds it
    assert ":-999" not in text and "999" not in text
    assert '"${DOCKER_GID:?set DOCKER_GID=$(stat -c %g /var/run/docker.sock)}"' in text
    assert "DOCKER_GID=$(stat -c %g /var/run/docker.sock)" in README
