"""Tests for agent_config: loading, validation, --print-config and CLI flags."""

from __future__ import annotations

import argparse
import io
import json
import logging
from pathlib import Path

import pytest

from actors.errors import ConfigError
from actors.rules.policy import Policy
from agent_config import (
    SETTINGS,
    Config,
    add_cli_flags,
    format_config,
    load_config,
    overrides_from_args,
)
from messages.common import Secret
from tests.test_logs import logging_to

URL = "https://dockmon.example.com"
TOKEN = "7c0e2f4a-1b9d-4e55-9a61-2f0c3d4b5e6f"


def no_paths(_: str) -> bool:
    return False


def load(env: dict[str, str] | None = None, **kwargs: object) -> Config:
    kwargs.setdefault("path_exists", no_paths)
    return load_config({"DOCKMON_URL": URL, **(env or {})}, **kwargs)  # type: ignore[arg-type]


def problems(env: dict[str, str], **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(env, **kwargs)
    return info.value.problems


def one_problem(env: dict[str, str], **kwargs: object) -> str:
    found = problems(env, **kwargs)
    assert len(found) == 1, found
    return found[0]


def write(tmp_path: Path, text: str, name: str = "agent.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- defaults and parsing


def test_defaults() -> None:
    cfg = load()
    assert cfg == Config(
        dockmon_url=URL,
        ws_url="wss://dockmon.example.com/api/agent/ws",
        registration_token=None,
        permanent_token=None,
        registration_token_file=None,
        permanent_token_file=None,
        insecure_skip_verify=False,
        ca_cert=None,
        docker_host="unix:///var/run/docker.sock",
        docker_cert_path=None,
        docker_tls_verify=False,
        proto_version="1.1",
        agent_name=None,
        force_unique_registration=False,
        reconnect_initial=1.0,
        reconnect_max=60.0,
        data_path="/data",
        agent_stacks_dir="/data/stacks",
        host_stacks_dir=None,
        update_timeout=120.0,
        unhealthy_after=300.0,
        policy=Policy(),
        log_level="info",
        log_json=None,  # JSON unless stderr is a terminal
        https_proxy=None,
        http_proxy=None,
        no_proxy=None,
        sources=tuple((s.name, "env" if s.name == "DOCKMON_URL" else "default") for s in SETTINGS),
    )


def test_every_env_var_is_parsed(tmp_path: Path) -> None:
    ca = write(tmp_path, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", "ca.pem")
    env = {
        "DOCKMON_URL": "http://dockmon:8080",
        "REGISTRATION_TOKEN": "reg-token-cfgtest",
        "PERMANENT_TOKEN": TOKEN,
        "REGISTRATION_TOKEN_FILE": "/run/secrets/reg",  # unused: REGISTRATION_TOKEN wins
        "PERMANENT_TOKEN_FILE": "/run/secrets/perm",  # unused: PERMANENT_TOKEN wins
        "INSECURE_SKIP_VERIFY": "true",
        "CA_CERT": ca,
        "DOCKER_HOST": "unix:///custom/docker.sock",
        "DOCKER_API_VERSION": "1.41",
        "DOCKER_CERT_PATH": "/certs",  # ignored with a unix socket
        "DOCKER_TLS_VERIFY": "1",
        "PROTO_VERSION": "1.0",
        "AGENT_NAME": "  edge-01  ",
        "FORCE_UNIQUE_REGISTRATION": "T",
        "RECONNECT_INITIAL": "500ms",
        "RECONNECT_MAX": "2m",
        "DATA_PATH": "/var/lib/agent",
        "AGENT_STACKS_DIR": "/stacks",
        "HOST_STACKS_DIR": "/srv/stacks",
        "COMPOSE_ROOTS": "/stacks,/opt/apps",
        "UPDATE_TIMEOUT": "1m30s",
        "SELF_UPDATE_IMAGE": "registry.example.com/dockmon-agent:2",
        "SELF_UPDATE_TIMEOUT": "45s",
        "DEPLOY_STOP_TIMEOUT": "1m",
        "UNHEALTHY_AFTER": "2m",
        "LOG_LEVEL": "WARN",
        "LOG_JSON": "false",
        "HTTPS_PROXY": "https://proxy:3128",
        "HTTP_PROXY": "http://proxy:3128",
        "NO_PROXY": "localhost,.internal",
    }
    cfg = load_config(env, path_exists=no_paths)
    assert cfg.dockmon_url == "http://dockmon:8080"
    assert cfg.ws_url == "ws://dockmon:8080/api/agent/ws"
    assert cfg.registration_token == Secret("reg-token-cfgtest")
    assert cfg.permanent_token == Secret(TOKEN)
    assert cfg.insecure_skip_verify is True
    assert cfg.ca_cert == ca
    assert cfg.docker_host == "unix:///custom/docker.sock"
    assert cfg.docker_api_version == "1.41"
    assert cfg.docker_cert_path == "/certs"
    assert cfg.docker_tls_verify is True
    assert cfg.proto_version == "1.0"
    assert cfg.agent_name == "edge-01"
    assert cfg.force_unique_registration is True
    assert cfg.reconnect_initial == 0.5
    assert cfg.reconnect_max == 120.0
    assert cfg.data_path == "/var/lib/agent"
    assert cfg.agent_stacks_dir == "/stacks"
    assert cfg.host_stacks_dir == "/srv/stacks"
    assert cfg.compose_roots == ("/stacks", "/opt/apps")
    assert cfg.update_timeout == 90.0
    assert cfg.self_update_image == "registry.example.com/dockmon-agent:2"
    assert cfg.self_update_timeout == 45.0
    assert cfg.deploy_stop_timeout == 60.0
    assert cfg.unhealthy_after == 120.0
    assert cfg.log_level == "warning"
    assert cfg.log_json is False
    assert cfg.https_proxy == "https://proxy:3128"
    assert cfg.http_proxy == "http://proxy:3128"
    assert cfg.no_proxy == "localhost,.internal"
    assert cfg.registration_token_file == "/run/secrets/reg"
    assert cfg.permanent_token_file == "/run/secrets/perm"
    sources = dict(cfg.sources)
    assert sources.pop("PERMANENT_TOKEN_FILE") == "env; unused, PERMANENT_TOKEN is set"
    assert sources.pop("REGISTRATION_TOKEN_FILE") == "env; unused, REGISTRATION_TOKEN is set"
    assert set(sources.values()) == {"env"}


def test_stacks_dir_follows_data_path() -> None:
    assert load({"DATA_PATH": "/srv/agent/"}).agent_stacks_dir == "/srv/agent/stacks"


def test_empty_env_value_counts_as_unset() -> None:
    cfg = load({"LOG_LEVEL": "", "AGENT_NAME": "", "REGISTRATION_TOKEN": ""})
    assert (cfg.log_level, cfg.agent_name, cfg.registration_token) == ("info", None, None)
    assert dict(cfg.sources)["LOG_LEVEL"] == "default"


def test_lowercase_proxy_vars_are_accepted_and_uppercase_wins() -> None:
    cfg = load(
        {
            "https_proxy": "http://lower:1",
            "HTTPS_PROXY": "http://upper:1",
            "http_proxy": "http://lower:2",
            "no_proxy": "example.com",
        }
    )
    assert (cfg.https_proxy, cfg.http_proxy, cfg.no_proxy) == (
        "http://upper:1",
        "http://lower:2",
        "example.com",
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1h2m3s", 3723.0),
        ("250us", 0.00025),
        ("250\u00b5s", 0.00025),
        ("250\u03bcs", 0.00025),
        ("1000000ns", 0.001),
        ("+3s", 3.0),
    ],
)
def test_good_durations(text: str, seconds: float) -> None:
    assert load({"UPDATE_TIMEOUT": text}).update_timeout == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["abc", "5", "1.5", "s", "1d", "1 s", "1S", "1s2", "--1s", "."])
def test_bad_durations(text: str) -> None:
    assert one_problem({"RECONNECT_MAX": text}) == (
        f"RECONNECT_MAX: invalid duration {text!r} (use Go syntax such as 500ms, 2s, 1m30s)"
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [(t, True) for t in ("1", "t", "T", "TRUE", "true", "True")]
    + [(f, False) for f in ("0", "f", "F", "FALSE", "false", "False")],
)
def test_go_booleans(text: str, value: bool) -> None:
    assert load({"INSECURE_SKIP_VERIFY": text}).insecure_skip_verify is value


@pytest.mark.parametrize("text", ["yes", "on", "tRUE", "2", " true"])
def test_bad_boolean(text: str) -> None:
    assert one_problem({"LOG_JSON": text}) == (
        f"LOG_JSON: invalid boolean {text!r} (use true or false)"
    )


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load({"RECONNECT_INITIAL": "soon", "LOG_JSON": "yes", "LOG_LEVEL": "loud"})
    assert sorted(info.value.problems) == [
        "LOG_JSON: invalid boolean 'yes' (use true or false)",
        "LOG_LEVEL: invalid level 'loud' (use debug, info, warning or error)",
        "RECONNECT_INITIAL: invalid duration 'soon' (use Go syntax such as 500ms, 2s, 1m30s)",
    ]
    assert "3 problems" in str(info.value)


# --- DOCKMON_URL


def test_dockmon_url_missing() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({}, path_exists=no_paths)
    assert info.value.problems == [
        "DOCKMON_URL is not set; set DOCKMON_URL to the DockMon server address, "
        "e.g. https://dockmon.example.com"
    ]


@pytest.mark.parametrize(
    ("url", "ws_url"),
    [
        ("http://h", "ws://h/api/agent/ws"),
        ("https://h/", "wss://h/api/agent/ws"),
        ("https://h/dockmon", "wss://h/dockmon/api/agent/ws"),
        ("https://h/dockmon//", "wss://h/dockmon/api/agent/ws"),
        ("wss://h:8443", "wss://h:8443/api/agent/ws"),
        ("ws://10.0.0.5:8080/", "ws://10.0.0.5:8080/api/agent/ws"),
        ("HTTPS://h", "wss://h/api/agent/ws"),
    ],
)
def test_ws_url(url: str, ws_url: str) -> None:
    cfg = load({"DOCKMON_URL": url})
    assert (cfg.dockmon_url, cfg.ws_url) == (url, ws_url)


@pytest.mark.parametrize(
    "url", ["dockmon.example.com", "ftp://h", "https://", "https://h:99999", "https://h/?x=1"]
)
def test_bad_dockmon_url(url: str) -> None:
    problem = one_problem({"DOCKMON_URL": url})
    assert problem.startswith(f"DOCKMON_URL: invalid URL {url!r}")
    assert "https://dockmon.example.com" in problem


# --- other validation


def test_docker_host_default_is_first_existing_socket() -> None:
    def exists(path: str) -> bool:
        return path in {"/run/docker.sock", "/run/podman/podman.sock"}

    assert load(path_exists=exists).docker_host == "unix:///run/docker.sock"
    assert load(path_exists=lambda p: p.startswith("/run/podman")).docker_host == (
        "unix:///run/podman/podman.sock"
    )
    assert load(path_exists=no_paths).docker_host == "unix:///var/run/docker.sock"
    assert load({"DOCKER_HOST": "tcp://docker:2375"}, path_exists=exists).docker_host == (
        "tcp://docker:2375"
    )


@pytest.mark.parametrize("host", ["npipe:////./pipe/docker_engine", "ssh://me@h", "tcp://"])
def test_bad_docker_host(host: str) -> None:
    assert one_problem({"DOCKER_HOST": host}).startswith(f"DOCKER_HOST: unsupported value {host!r}")


def test_unix_docker_host_needs_absolute_path() -> None:
    assert "absolute socket path" in one_problem({"DOCKER_HOST": "unix://docker.sock"})


@pytest.mark.parametrize("tls", [{"DOCKER_TLS_VERIFY": "true"}, {"DOCKER_CERT_PATH": "/certs"}])
def test_docker_tls_is_refused_for_tcp(tls: dict[str, str]) -> None:
    assert one_problem({"DOCKER_HOST": "tcp://docker:2376", **tls}) == (
        "TLS to the Docker daemon is not supported by this agent yet; "
        "unset DOCKER_TLS_VERIFY/DOCKER_CERT_PATH or use a unix socket"
    )


def test_force_unique_requires_agent_name() -> None:
    message = "FORCE_UNIQUE_REGISTRATION=true requires AGENT_NAME to be set"
    assert one_problem({"FORCE_UNIQUE_REGISTRATION": "true"}) == message
    assert one_problem({"FORCE_UNIQUE_REGISTRATION": "true", "AGENT_NAME": "   "}) == message
    cfg = load({"FORCE_UNIQUE_REGISTRATION": "true", "AGENT_NAME": "edge"})
    assert cfg.force_unique_registration


def test_agent_name_too_long() -> None:
    assert load({"AGENT_NAME": "x" * 255}).agent_name == "x" * 255
    assert one_problem({"AGENT_NAME": "x" * 256}) == (
        "AGENT_NAME: 256 characters, at most 255 allowed"
    )


@pytest.mark.parametrize(
    "token", ['"quoted-cfgtest"', "cfgtest has space", "cfgtest;semicolon", "x" * 256]
)
def test_bad_token_is_never_printed(token: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({"REGISTRATION_TOKEN": token})
    (problem,) = info.value.problems
    assert problem.startswith("REGISTRATION_TOKEN: invalid token")
    assert token not in problem
    assert token not in str(info.value)


def test_tokens_are_registered_for_redaction() -> None:
    stream = io.StringIO()
    with logging_to(stream, json_format=True):
        load({"PERMANENT_TOKEN": "perm-abc-123456"})
        logging.getLogger("t").info("using perm-abc-123456")
    assert json.loads(stream.getvalue())["message"] == "using ****"


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"RECONNECT_INITIAL": "0"}, "RECONNECT_INITIAL: must be greater than 0, got 0"),
        (
            {"RECONNECT_INITIAL": "2m", "RECONNECT_MAX": "30s"},
            "RECONNECT_MAX (30s) must be at least RECONNECT_INITIAL (2m)",
        ),
        ({"DATA_PATH": "data"}, "DATA_PATH: 'data' must be an absolute path"),
        ({"PROTO_VERSION": "1" * 21}, f"PROTO_VERSION: {'1' * 21!r} is longer than 20 characters"),
        ({"HTTP_PROXY": "socks5://p:1080"}, "HTTP_PROXY: invalid proxy URL 'socks5://p:1080'"),
        ({"HTTPS_PROXY": "proxy:3128"}, "HTTPS_PROXY: invalid proxy URL 'proxy:3128'"),
    ],
)
def test_validation(env: dict[str, str], problem: str) -> None:
    assert one_problem(env).startswith(problem)


def test_reconnect_relation_is_skipped_when_a_value_is_invalid() -> None:
    assert problems({"RECONNECT_INITIAL": "2m", "RECONNECT_MAX": "bad"}) == [
        "RECONNECT_MAX: invalid duration 'bad' (use Go syntax such as 500ms, 2s, 1m30s)"
    ]


def test_proxy_password_is_masked_in_errors() -> None:
    problem = one_problem({"HTTPS_PROXY": "ftp://user:hunter2secret@proxy:21"})
    assert "hunter2secret" not in problem
    assert "ftp://user:****@proxy:21" in problem


@pytest.mark.parametrize(("text", "level"), [("DEBUG", "debug"), ("Warn", "warning")])
def test_log_level_is_normalised(text: str, level: str) -> None:
    assert load({"LOG_LEVEL": text}).log_level == level


def test_ca_cert(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    assert one_problem({"CA_CERT": missing}) == (
        f"CA_CERT: cannot read {missing!r}: No such file or directory; point CA_CERT at a PEM "
        "file the agent can read (mount it into the container), or unset CA_CERT"
    )
    not_pem = write(tmp_path, "hello", "not.pem")
    assert one_problem({"CA_CERT": not_pem}).startswith(
        f"CA_CERT: {not_pem!r} contains no PEM certificate; it must hold "
    )


def test_compose_roots() -> None:
    assert load().compose_roots is None  # unset: the defaults of PROTOCOL §8.2 + stacks dir
    cfg = load({"COMPOSE_ROOTS": " /srv/stacks/ ,/opt/apps,,/srv/stacks"})
    assert cfg.compose_roots == ("/srv/stacks", "/opt/apps")
    assert "COMPOSE_ROOTS=/srv/stacks,/opt/apps  # env" in format_config(cfg).splitlines()
    assert one_problem({"COMPOSE_ROOTS": "/opt,stacks"}) == (
        "COMPOSE_ROOTS: 'stacks' must be an absolute path"
    )
    assert one_problem({"COMPOSE_ROOTS": "/etc/compose"}) == (
        "COMPOSE_ROOTS: '/etc/compose' is a system directory and cannot be a root"
    )
    assert one_problem({"COMPOSE_ROOTS": " , "}) == (
        "COMPOSE_ROOTS: no directory given (unset it to use the defaults)"
    )


# --- YAML file and precedence


def test_yaml_env_flag_precedence(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "dockmon_url: https://from-yaml\nAGENT_NAME: yaml-name\nlog_level: debug\n"
        "Proto_Version: yaml-proto\n",
    )
    cfg = load_config(
        {"DOCKMON_CONFIG": path, "AGENT_NAME": "env-name", "LOG_LEVEL": "error"},
        overrides={"LOG_LEVEL": "warning"},
        path_exists=no_paths,
    )
    assert cfg.dockmon_url == "https://from-yaml"
    assert cfg.proto_version == "yaml-proto"
    assert cfg.agent_name == "env-name"
    assert cfg.log_level == "warning"
    sources = dict(cfg.sources)
    assert [sources[n] for n in ("DOCKMON_URL", "AGENT_NAME", "LOG_LEVEL", "DATA_PATH")] == [
        "yaml",
        "env",
        "flag",
        "default",
    ]


def test_config_path_argument_beats_dockmon_config(tmp_path: Path) -> None:
    used = write(tmp_path, "agent_name: argument\n", "a.yaml")
    ignored = write(tmp_path, "agent_name: env\n", "b.yaml")
    cfg = load({"DOCKMON_CONFIG": ignored}, config_path=used)
    assert cfg.agent_name == "argument"


def test_yaml_typed_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "insecure_skip_verify: true\nlog_json: 0\nreconnect_initial: 0.25\n"
        "reconnect_max: 90\nupdate_timeout: 2m\nproto_version: 1.2\nagent_name:\n",
    )
    cfg = load(config_path=path)
    assert cfg.insecure_skip_verify is True
    assert cfg.log_json is False
    assert (cfg.reconnect_initial, cfg.reconnect_max, cfg.update_timeout) == (0.25, 90.0, 120.0)
    assert cfg.proto_version == "1.2"
    assert dict(cfg.sources)["AGENT_NAME"] == "default"


def test_yaml_unsupported_values(tmp_path: Path) -> None:
    path = write(tmp_path, "agent_name: yes\nno_proxy: [a, b]\nregistration_token: [secret-x]\n")
    found = problems({}, config_path=path)
    assert found == [
        f"config file {path!r}: AGENT_NAME: unsupported YAML bool True; quote it if it is text",
        f"config file {path!r}: NO_PROXY: unsupported YAML list ['a', 'b']; quote it if it is text",
        f"config file {path!r}: REGISTRATION_TOKEN: unsupported YAML list; quote it if it is text",
    ]


def test_yaml_unknown_key_suggests_closest(tmp_path: Path) -> None:
    path = write(tmp_path, "dockmon_ulr: https://h\nLOG_LEVL: debug\nfoo: 1\n")
    assert problems({}, config_path=path) == [
        f"config file {path!r}: unknown setting 'dockmon_ulr' (did you mean 'dockmon_url'?)",
        f"config file {path!r}: unknown setting 'LOG_LEVL' (did you mean 'LOG_LEVEL'?)",
        f"config file {path!r}: unknown setting 'foo'",
    ]


def test_yaml_key_given_twice(tmp_path: Path) -> None:
    path = write(tmp_path, "agent_name: a\nAGENT_NAME: b\n")
    assert one_problem({}, config_path=path) == f"config file {path!r}: AGENT_NAME is given twice"


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "agent_name: a\nlog_level: [debug\n")
    problem = one_problem({}, config_path=path)
    assert problem.startswith(f"config file {path!r}: YAML syntax error at line 3:")


def test_yaml_file_problems(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    assert one_problem({}, config_path=missing) == f"config file {missing!r} does not exist"
    assert one_problem({}, config_path=str(tmp_path)) == (
        f"config file {str(tmp_path)!r} cannot be read: Is a directory"
    )
    listing = write(tmp_path, "- a\n- b\n")
    assert one_problem({}, config_path=listing) == (
        f"config file {listing!r}: the top level must be a mapping of settings, not a list"
    )
    assert load(config_path=write(tmp_path, "# nothing\n", "empty.yaml")).log_level == "info"


def test_yaml_problems_are_collected_with_env_problems(tmp_path: Path) -> None:
    path = write(tmp_path, "bogus: 1\nlog_json: maybe\n")
    assert len(problems({"LOG_LEVEL": "loud"}, config_path=path)) == 3


# --- --print-config and CLI flags


def test_format_config_masks_secrets_and_shows_sources(tmp_path: Path) -> None:
    cfg = load(
        {
            "REGISTRATION_TOKEN": TOKEN,
            "HTTPS_PROXY": "http://bob:s3cretpass@proxy:3128",
            "RECONNECT_INITIAL": "1500ms",
        },
        config_path=write(tmp_path, "agent_name: edge\n"),
        overrides={"LOG_JSON": "false"},
    )
    text = format_config(cfg)
    lines = text.splitlines()
    assert [line.split("=", 1)[0] for line in lines] == [s.name for s in SETTINGS]
    assert TOKEN not in text
    assert "s3cretpass" not in text
    assert f"DOCKMON_URL={URL}  # env" in lines
    assert "REGISTRATION_TOKEN=7c0e…5e6f  # env" in lines
    assert "PERMANENT_TOKEN=  # default" in lines
    assert "HTTPS_PROXY=http://bob:****@proxy:3128  # env" in lines
    assert "AGENT_NAME=edge  # yaml" in lines
    assert "LOG_JSON=false  # flag" in lines
    assert "RECONNECT_INITIAL=1.5s  # env" in lines
    assert "RECONNECT_MAX=60s  # default" in lines
    assert "DOCKER_HOST=unix:///var/run/docker.sock  # default" in lines


def test_cli_flags_round_trip() -> None:
    parser = argparse.ArgumentParser()
    add_cli_flags(parser)
    ns = parser.parse_args(
        [
            *("--config", "/etc/agent.yaml", "--dockmon-url", "http://h", "--log-level", "debug"),
            *("--force-unique-registration", "true", "--agent-name", "edge"),
        ]
    )
    assert ns.config == "/etc/agent.yaml"
    overrides = overrides_from_args(ns)
    assert overrides == {
        "DOCKMON_URL": "http://h",
        "AGENT_NAME": "edge",
        "FORCE_UNIQUE_REGISTRATION": "true",
        "LOG_LEVEL": "debug",
    }
    cfg = load_config({}, overrides=overrides, path_exists=no_paths)
    assert (cfg.ws_url, cfg.log_level, cfg.force_unique_registration) == (
        "ws://h/api/agent/ws",
        "debug",
        True,
    )
    assert overrides_from_args(parser.parse_args([])) == {}
    assert all(f"--{s.name.lower().replace('_', '-')}" in parser.format_help() for s in SETTINGS)


def test_unknown_override_is_a_problem() -> None:
    assert one_problem({}, overrides={"NOPE": "1"}) == "unknown setting 'NOPE'"


def test_policy_section_in_yaml(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "dockmon_url: https://d.example\n"
        "policy:\n"
        "  read_only: true\n"
        "  deny: [shell_session, remove]\n"
        "  protected_containers:\n"
        "    names: ['db-*']\n"
        "    labels: ['critical=true', 'keep']\n",
    )
    policy = load_config({}, config_path=path).policy
    assert policy.read_only and policy.deny == {"shell_session", "remove"}
    assert policy.protected_names == ("db-*",)
    assert policy.protected_labels == (("critical", "true"), ("keep", None))


def test_policy_problems_are_reported_with_the_rest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "policy:\n  read_only: 'yes'\n  deny: remove\n  frobnicate: 1\n",
    )
    with pytest.raises(ConfigError) as err:
        load_config({}, config_path=path)
    text = "\n".join(err.value.problems)
    assert "policy.read_only must be true or false" in text
    assert "policy.deny must be a list of names" in text
    assert "unknown policy key 'frobnicate'" in text
    assert "DOCKMON_URL" in text


def test_self_update_settings() -> None:
    cfg = load({"REGISTRATION_TOKEN": TOKEN})
    assert cfg.self_update_image is None and cfg.self_update_timeout == 120.0
    digest = "sha256:" + "ab" * 32
    for image in ("127.0.0.1:5000/agent:v2", f"registry.example.com/team/agent@{digest}"):
        cfg = load({"SELF_UPDATE_IMAGE": image, "SELF_UPDATE_TIMEOUT": "1m30s"})
        assert cfg.self_update_image == image and cfg.self_update_timeout == 90.0
    found = problems({"SELF_UPDATE_IMAGE": "Agent:v2 ", "SELF_UPDATE_TIMEOUT": "0s"})
    assert any(p.startswith("SELF_UPDATE_IMAGE: invalid image reference") for p in found)
    assert "SELF_UPDATE_TIMEOUT: must be greater than 0, got 0s" in found
    assert "digest must be sha256" in one_problem({"SELF_UPDATE_IMAGE": "agent@sha256:12"})
