"""Agent configuration: the settings table and loading (defaults < YAML < env < flags).

``SETTINGS`` is the one source of truth: ``load_config`` reads it, ``add_cli_flags`` turns it into
flags and ``format_config`` prints it. Unlike the Go agent, a bad value is never silently replaced
by its default: every problem is collected and raised in one ``ConfigError``.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from actors.errors import ConfigError
from actors.host.privileges import DEFAULT_SOCKETS
from actors.rules.image_refs import parse_image_ref
from actors.rules.paths import is_system_path
from actors.rules.permissions import Policy, parse_policy
from actors.runtime.docker_client import api_version_problem
from actors.runtime.logs import parse_level, register_secret
from messages.common import Secret
from messages.records import record
from messages.tokens import TOKEN_PATTERN

if TYPE_CHECKING:
    import argparse  # only the CLI builds parsers: `healthcheck` without arguments needs none

_T = TypeVar("_T")


@record
class Setting:
    """One setting. ``kind`` is url|text|path|bool|duration|level; ``default`` is its env text."""

    name: str
    kind: str
    default: str | None
    help: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("DOCKMON_URL", "url", None, "DockMon server address, e.g. https://dockmon.example.com"),
    Setting("REGISTRATION_TOKEN", "text", None, "one-time token from the DockMon UI", secret=True),
    Setting(
        "PERMANENT_TOKEN", "text", None, "agent token; overrides $DATA_PATH/permanent_token", True
    ),
    Setting(
        "REGISTRATION_TOKEN_FILE",
        "path",
        None,
        "file holding REGISTRATION_TOKEN (Docker secrets); REGISTRATION_TOKEN wins if both are set",
    ),
    Setting(
        "PERMANENT_TOKEN_FILE",
        "path",
        None,
        "file holding PERMANENT_TOKEN (Docker secrets); PERMANENT_TOKEN wins if both are set",
    ),
    Setting("INSECURE_SKIP_VERIFY", "bool", "false", "skip TLS verification of the DockMon server"),
    Setting("CA_CERT", "path", None, "PEM bundle of extra CA certificates to trust for wss://"),
    Setting(
        "DOCKER_HOST",
        "url",
        None,
        "Docker daemon, unix:// or tcp:// (default: first existing of /var/run/docker.sock, "
        "/run/docker.sock, /run/podman/podman.sock)",
    ),
    Setting(
        "DOCKER_API_VERSION",
        "text",
        None,
        "Docker API version every Docker client uses, e.g. 1.41 (default: negotiated)",
    ),
    Setting("DOCKER_CERT_PATH", "path", None, "Docker client certificates (TLS not supported)"),
    Setting("DOCKER_TLS_VERIFY", "bool", "false", "TLS to the Docker daemon (not supported)"),
    Setting("PROTO_VERSION", "text", "1.1", "protocol version sent at registration"),
    Setting("AGENT_NAME", "text", None, "host name to register under (at most 255 characters)"),
    Setting(
        "FORCE_UNIQUE_REGISTRATION",
        "bool",
        "false",
        "register as a new host even if the engine id is known (needs AGENT_NAME)",
    ),
    Setting("RECONNECT_INITIAL", "duration", "1s", "first reconnect backoff"),
    Setting("RECONNECT_MAX", "duration", "60s", "reconnect backoff cap"),
    Setting("DATA_PATH", "path", "/data", "directory for the permanent token and agent state"),
    Setting(
        "AGENT_STACKS_DIR", "path", None, "compose stacks directory (default: $DATA_PATH/stacks)"
    ),
    Setting("HOST_STACKS_DIR", "path", None, "host-side path of the stacks directory"),
    Setting(
        "COMPOSE_ROOTS",
        "text",
        None,
        "comma-separated absolute directories compose scan/read may use (default: the stacks "
        "directory plus /opt, /srv, /var/lib/docker-compose, /var/lib/docker/volumes, the agent "
        "user's home directory ($HOME: /data in the image, /home/<user> for a user), /stacks, "
        "/docker, /mnt, /data, /compose where they exist)",
    ),
    Setting("UPDATE_TIMEOUT", "duration", "120s", "container update timeout (unused, like Go)"),
    Setting(
        "SELF_UPDATE_IMAGE",
        "text",
        None,
        "image this agent updates itself to on self_update (a tag or a pinned @sha256: digest); "
        "unset: self_update is refused",
    ),
    Setting(
        "SELF_UPDATE_TIMEOUT",
        "duration",
        "120s",
        "how long the new agent may take to register before a self-update is rolled back",
    ),
    Setting(
        "DEPLOY_STOP_TIMEOUT",
        "duration",
        "20s",
        "on SIGTERM, how long a running deploy_compose may go on before compose is stopped "
        "(it is then reported failed at the next start)",
    ),
    Setting(
        "UNHEALTHY_AFTER",
        "duration",
        "5m",
        "`dockmon-agent healthcheck` fails once the agent has not been registered this long",
    ),
    Setting("LOG_LEVEL", "level", "info", "debug, info, warning or error"),
    Setting(
        "LOG_JSON",
        "bool",
        None,
        "JSON lines (true) or coloured text (false); unset: coloured text when stderr is a "
        "terminal, JSON lines otherwise",
    ),
    Setting("HTTPS_PROXY", "url", None, "proxy for https:// and wss:// (or https_proxy)"),
    Setting("HTTP_PROXY", "url", None, "proxy for http:// and ws:// (or http_proxy)"),
    Setting("NO_PROXY", "text", None, "hosts that bypass the proxy (or no_proxy)"),
)
_BY_NAME = {s.name: s for s in SETTINGS}

#: YAML keys that hold a mapping of their own instead of a setting
SECTIONS = frozenset({"policy"})
_LOWERCASE_TOO = frozenset({"HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"})
_DOCKER_SOCKETS = DEFAULT_SOCKETS
_URL_HINT = "set DOCKMON_URL to the DockMon server address, e.g. https://dockmon.example.com"
_DOCKER_TLS = (
    "TLS to the Docker daemon is not supported by this agent yet; "
    "unset DOCKER_TLS_VERIFY/DOCKER_CERT_PATH or use a unix socket"
)
_USERINFO = re.compile(r"//([^/@:]*):([^/@]*)@")


@record(kw_only=True)
class Config:
    dockmon_url: str
    ws_url: str
    registration_token: Secret | None
    permanent_token: Secret | None
    registration_token_file: str | None = None
    permanent_token_file: str | None = None
    insecure_skip_verify: bool
    ca_cert: str | None
    docker_host: str
    docker_api_version: str | None = None
    docker_cert_path: str | None
    docker_tls_verify: bool
    proto_version: str
    agent_name: str | None
    force_unique_registration: bool
    reconnect_initial: float
    reconnect_max: float
    data_path: str
    agent_stacks_dir: str
    host_stacks_dir: str | None
    #: None: the defaults (actors/commands/compose_files.py)
    compose_roots: tuple[str, ...] | None = None
    update_timeout: float
    self_update_image: str | None = None
    self_update_timeout: float = 120.0
    deploy_stop_timeout: float = 20.0
    unhealthy_after: float
    policy: Policy
    log_level: str
    log_json: bool | None  # None: JSON unless stderr is a terminal
    https_proxy: str | None
    http_proxy: str | None
    no_proxy: str | None
    sources: tuple[tuple[str, str], ...]


# --- value parsers: each returns the typed value or raises ValueError(message without the name)

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # Greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_DURATION = re.compile(rf"[+-]?(?:{_DURATION_PART.pattern})+")


def _parse_bool(text: str) -> bool:
    """Go ``strconv.ParseBool``."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"invalid boolean {text!r} (use true or false)")


def _parse_duration(text: str) -> float:
    """Go ``time.ParseDuration``, in seconds."""
    if text.lstrip("+-") == "0":
        return 0.0
    if not _DURATION.fullmatch(text):
        raise ValueError(f"invalid duration {text!r} (use Go syntax such as 500ms, 2s, 1m30s)")
    total = sum(float(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(text))
    return -total if text.startswith("-") else total


def _seconds_text(seconds: float) -> str:
    """Seconds as a Go duration: 1.5 -> '1.5s', 60 -> '60s'."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def _mask_url(url: str) -> str:
    return _USERINFO.sub(r"//\1:****@", url)


def _url_problem(url: str, schemes: tuple[str, ...]) -> str | None:
    """Why ``url`` is not a ``scheme://host[:port][/path]`` URL with an allowed scheme, or None."""
    try:
        parts = urlsplit(url)
        if parts.scheme not in schemes:
            return "the scheme must be " + " or ".join(f"{s}://" for s in schemes)
        if not parts.hostname:
            return "no host"
        if parts.port == 0:
            return "port 0"
    except ValueError as exc:
        return str(exc)
    if parts.query or parts.fragment:
        return "no query or fragment allowed"
    return None


def _ws_url(url: str) -> str:
    """PROTOCOL §1.1: http -> ws, https -> wss, strip trailing '/', append /api/agent/ws."""
    scheme, rest = url.split(":", 1)
    scheme = {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme.lower())
    return f"{scheme}:{rest.rstrip('/')}/api/agent/ws"


# --- loading


def _yaml_text(setting: Setting, value: object) -> str:
    """A YAML scalar as the text the env var would hold (numbers are seconds for durations)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        if setting.kind == "bool":
            return "true" if value else "false"
    elif isinstance(value, int | float):
        return _seconds_text(value) if setting.kind == "duration" else str(value)
    shown = "" if setting.secret else f" {value!r}"
    raise ValueError(f"unsupported YAML {type(value).__name__}{shown}; quote it if it is text")


def _read_yaml(path: str, problems: list[str], sections: dict[str, Any]) -> dict[str, str] | None:
    """Settings from the file; mapping-valued sections (``policy``) go to ``sections``.

    None (and a problem) when the file cannot be used at all: missing, unreadable, not YAML.
    """
    where = f"config file {path!r}"
    import yaml  # here: without a config file (healthcheck, most agents) PyYAML never loads

    try:
        with open(path, "rb") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        problems.append(f"{where} does not exist")
        return None
    except OSError as exc:
        problems.append(f"{where} cannot be read: {exc.strerror}")
        return None
    except yaml.MarkedYAMLError as exc:
        line = f" at line {exc.problem_mark.line + 1}" if exc.problem_mark else ""
        problems.append(f"{where}: YAML syntax error{line}: {exc.problem}")
        return None
    except yaml.YAMLError as exc:
        problems.append(f"{where}: invalid YAML: {exc}")
        return None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = type(data).__name__
        problems.append(f"{where}: the top level must be a mapping of settings, not a {kind}")
        return None
    values: dict[str, str] = {}
    for key, value in data.items():
        if str(key).lower() in SECTIONS:
            sections[str(key).lower()] = value
            continue
        setting = _BY_NAME.get(str(key).upper())
        if setting is None:
            import difflib

            close = difflib.get_close_matches(str(key).upper(), _BY_NAME, n=1)
            guess = close[0].lower() if close and str(key).islower() else "".join(close)
            hint = f" (did you mean {guess!r}?)" if guess else ""
            problems.append(f"{where}: unknown setting {key!r}{hint}")
        elif setting.name in values:
            problems.append(f"{where}: {setting.name} is given twice")
        elif value is not None:
            try:
                values[setting.name] = _yaml_text(setting, value)
            except ValueError as exc:
                problems.append(f"{where}: {setting.name}: {exc}")
    return values


_SECRET_FILE_LIMIT = 64 * 1024


def _read_secret_file(name: str, path: str, problems: list[str]) -> str | None:
    """A ``*_FILE`` secret (Docker secrets style): the file's text without trailing whitespace.

    Appends a problem naming the setting, the path and the fix, and returns None, when the file
    is missing, unreadable, not a regular file, too large, not UTF-8 or empty. The value is
    never put in a problem. Opened without blocking (a FIFO cannot hang startup) and checked to
    be a regular file before a byte is read; a symlink is followed, since Kubernetes mounts
    every secret as one.
    """
    value = name.removesuffix("_FILE")
    where = f"{name}: {path!r}"
    otherwise = f"or set {value} directly, or unset {name}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory")
            if not stat.S_ISREG(st.st_mode):
                problems.append(
                    f"{where} is not a regular file (a FIFO, device or socket); point {name} at "
                    f"the file that holds the token, {otherwise}"
                )
                return None
            data = f.read(_SECRET_FILE_LIMIT + 1)
    except FileNotFoundError:
        problems.append(
            f"{where} does not exist; mount the secret there (e.g. compose 'secrets:' puts it at "
            f"/run/secrets/<name>), fix the path, {otherwise}"
        )
        return None
    except PermissionError:
        problems.append(
            f"{where} is not readable by the agent's user (uid {os.getuid()}); make it readable "
            "(chown/chmod 0400, or set uid/mode on the compose secret)"
        )
        return None
    except IsADirectoryError:
        problems.append(f"{where} is a directory; point {name} at the file inside it")
        return None
    except OSError as exc:
        problems.append(f"{where} cannot be read: {exc.strerror or exc}; fix the path, {otherwise}")
        return None
    if len(data) > _SECRET_FILE_LIMIT:
        problems.append(f"{where} is larger than 64 KiB; it must contain only the token")
        return None
    try:
        token = data.decode("utf-8").rstrip()
    except UnicodeDecodeError:
        problems.append(f"{where} is not UTF-8 text; it must contain only the token")
        return None
    if not token:
        problems.append(
            f"{where} is empty; write the token from DockMon into it (no quotes), {otherwise}"
        )
        return None
    register_secret(token)
    return token


def _compose_roots(value: str | None, problems: list[str]) -> tuple[str, ...] | None:
    """COMPOSE_ROOTS: comma-separated absolute paths, none of them a system directory."""
    if value is None:
        return None
    roots: list[str] = []
    found_problem = False
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        if not os.path.isabs(item):
            problems.append(f"COMPOSE_ROOTS: {item!r} must be an absolute path")
            found_problem = True
        elif is_system_path(item):
            problems.append(f"COMPOSE_ROOTS: {item!r} is a system directory and cannot be a root")
            found_problem = True
        elif (root := os.path.normpath(item)) not in roots:
            roots.append(root)
    if not roots and not found_problem:
        problems.append("COMPOSE_ROOTS: no directory given (unset it to use the defaults)")
    return tuple(roots)


@record(kw_only=True)
class ConfigReport:
    """What ``inspect_config`` found: the config (None when invalid) and every problem.

    ``values`` holds each ``Config`` field as parsed (the default where its text is invalid),
    ``texts`` the text each given setting had, ``sources`` where each came from, and
    ``file_failed`` says the YAML file could not be used at all (so "not set" means nothing).
    """

    config: Config | None
    problems: tuple[str, ...]
    values: Mapping[str, Any]
    texts: Mapping[str, str]
    sources: Mapping[str, str]
    file_failed: bool = False

    def problems_of(self, name: str) -> list[str]:
        """The problems that name setting ``name`` first."""
        return [p for p in self.problems if problem_setting(p) == name]


_PROBLEM_NAME = re.compile(r"([A-Z][A-Z0-9_]*)\b")


def problem_setting(problem: str) -> str | None:
    """The setting a problem is about, when it starts with that setting's name."""
    match = _PROBLEM_NAME.match(problem)
    return match.group(1) if match and match.group(1) in _BY_NAME else None


def load_config(
    environ: Mapping[str, str],
    *,
    config_path: str | None = None,
    overrides: Mapping[str, str] | None = None,
    path_exists: Callable[[str], bool] = os.path.exists,
) -> Config:
    """Build the config from defaults < YAML < environ < overrides; empty values count as unset.

    Raises ``ConfigError`` listing every problem found.
    """
    report = inspect_config(
        environ, config_path=config_path, overrides=overrides, path_exists=path_exists
    )
    if report.config is None:
        raise ConfigError(list(report.problems))
    return report.config


def inspect_config(
    environ: Mapping[str, str],
    *,
    config_path: str | None = None,
    overrides: Mapping[str, str] | None = None,
    path_exists: Callable[[str], bool] = os.path.exists,
) -> ConfigReport:
    """``load_config`` without raising: every problem, and every value it could parse."""
    path = config_path or environ.get("DOCKMON_CONFIG")
    given = _Given()
    if path:
        given.read_file(path)
    given.read_env(environ)
    given.read_flags(overrides or {})
    values = _parse_settings(given, path, path_exists)
    return _report(given, values)


# --- loading, step 1: the text each setting was given, and where from


class _Given:
    """The settings' texts as given (defaults < YAML < env < flags; empty counts as unset) and
    every problem found so far, in the order found."""

    def __init__(self) -> None:
        self.texts: dict[str, tuple[str, str]] = {}  # name -> (text, source)
        self.problems: list[str] = []
        #: the settings whose text did not parse (their default stands in)
        self.failed: set[str] = set()
        #: the YAML file's mapping-valued sections (``policy``)
        self.sections: dict[str, Any] = {}
        #: the YAML file could not be used at all (so "not set" means nothing)
        self.file_failed = False

    def read_file(self, path: str) -> None:
        settings = _read_yaml(path, self.problems, self.sections)
        self.file_failed = settings is None
        self.texts.update((name, (v, "yaml")) for name, v in (settings or {}).items())

    def read_env(self, environ: Mapping[str, str]) -> None:
        for s in SETTINGS:
            value = environ.get(s.name) or (
                environ.get(s.name.lower()) if s.name in _LOWERCASE_TOO else ""
            )
            if value:
                self.texts[s.name] = (value, "env")

    def read_flags(self, overrides: Mapping[str, str]) -> None:
        for name, value in overrides.items():
            if name not in _BY_NAME:
                self.problems.append(f"unknown setting {name!r}")
            elif value:
                self.texts[name] = (value, "flag")

    def text(self, name: str) -> str | None:
        """The setting's text, or its default (None: no default)."""
        return self.texts[name][0] if name in self.texts else _BY_NAME[name].default

    def parsed(self, name: str, parse: Callable[[str], _T]) -> _T:
        """The setting's text parsed; its default (and a problem) when the text is invalid."""
        default = _BY_NAME[name].default
        assert default is not None, name
        try:
            return parse(self.text(name) or default)
        except ValueError as exc:
            self.problems.append(f"{name}: {exc}")
            self.failed.add(name)
            return parse(default)


# --- loading, step 2: each group of settings parsed, with the rules that join its settings


def _parse_settings(
    given: _Given, path: str | None, path_exists: Callable[[str], bool]
) -> dict[str, Any]:
    """Every ``Config`` field but ``sources``, parsed and checked in this order (the order of
    the problems)."""
    return {
        **_server_url(given),
        **_tokens(given),
        "ca_cert": _ca_cert(given),
        **_docker(given, path_exists),
        **_registration(given),
        **_reconnect(given),
        **_storage(given),
        **_proxies(given),
        **_log_settings(given),
        "insecure_skip_verify": given.parsed("INSECURE_SKIP_VERIFY", _parse_bool),
        **_updates(given),
        "unhealthy_after": given.parsed("UNHEALTHY_AFTER", _parse_duration),
        "policy": parse_policy(
            given.sections.get("policy"), f"config file {path!r}", given.problems
        ),
        "compose_roots": _compose_roots(given.text("COMPOSE_ROOTS"), given.problems),
    }


def _server_url(given: _Given) -> dict[str, Any]:
    """DOCKMON_URL (required) and the WebSocket URL made from it."""
    url = given.text("DOCKMON_URL")
    if url is None:
        if not given.file_failed:  # it may well be in the file we could not read
            given.problems.append(f"DOCKMON_URL is not set; {_URL_HINT}")
    elif reason := _url_problem(url, ("http", "https", "ws", "wss")):
        given.problems.append(
            f"DOCKMON_URL: invalid URL {_mask_url(url)!r} ({reason}); {_URL_HINT}"
        )
        url = None
    return {"dockmon_url": url or "", "ws_url": _ws_url(url) if url else ""}


def _tokens(given: _Given) -> dict[str, Any]:
    """REGISTRATION_TOKEN and PERMANENT_TOKEN, each given itself or in its ``*_FILE``."""
    return {
        "registration_token": _token(given, "REGISTRATION_TOKEN"),
        "permanent_token": _token(given, "PERMANENT_TOKEN"),
        "registration_token_file": given.text("REGISTRATION_TOKEN_FILE"),
        "permanent_token_file": given.text("PERMANENT_TOKEN_FILE"),
    }


def _token(given: _Given, name: str) -> Secret | None:
    """One token: the value itself wins over its file; registered for redaction, then checked."""
    token, label, file_name = given.text(name), name, f"{name}_FILE"
    file_path = given.text(file_name)
    if file_path and token:  # the value itself wins; say so in --print-config
        given.texts[file_name] = (file_path, f"{given.texts[file_name][1]}; unused, {name} is set")
    elif file_path:
        token = _read_secret_file(file_name, file_path, given.problems)
        if token:
            given.texts[name] = (token, f"file:{file_path}")
            label = f"{file_name} ({file_path!r})"
    if token:
        register_secret(token)
        if not TOKEN_PATTERN.fullmatch(token):
            given.problems.append(
                f"{label}: invalid token of {len(token)} characters; the server accepts only "
                "letters, digits, '_', ':' and '-', at most 255 (check for quotes or spaces)"
            )
    return Secret(token) if token else None


def _ca_cert(given: _Given) -> str | None:
    """CA_CERT: a readable file holding PEM certificates."""
    ca_cert = given.text("CA_CERT")
    if ca_cert:
        try:
            with open(ca_cert, encoding="utf-8", errors="replace") as f:
                pem = f.read()
        except OSError as exc:
            given.problems.append(
                f"CA_CERT: cannot read {ca_cert!r}: {exc.strerror}; point CA_CERT at a PEM file "
                "the agent can read (mount it into the container), or unset CA_CERT"
            )
        else:
            if "-----BEGIN CERTIFICATE-----" not in pem:
                given.problems.append(
                    f"CA_CERT: {ca_cert!r} contains no PEM certificate; it must hold "
                    "'-----BEGIN CERTIFICATE-----' blocks (convert DER with "
                    "'openssl x509 -inform der -in ca.der -out ca.pem')"
                )
    return ca_cert


def _docker(given: _Given, path_exists: Callable[[str], bool]) -> dict[str, Any]:
    """DOCKER_HOST (default: the first socket that exists), DOCKER_API_VERSION, and the TLS
    settings, which a tcp:// host refuses (not supported)."""
    docker_host = given.text("DOCKER_HOST") or next(
        (f"unix://{p}" for p in _DOCKER_SOCKETS if path_exists(p)), f"unix://{_DOCKER_SOCKETS[0]}"
    )
    docker_api_version = (given.text("DOCKER_API_VERSION") or "").strip() or None
    if docker_api_version and (why := api_version_problem(docker_api_version)):
        given.problems.append(f"DOCKER_API_VERSION: {why}")
    docker_cert_path = given.text("DOCKER_CERT_PATH")
    docker_tls_verify = given.parsed("DOCKER_TLS_VERIFY", _parse_bool)
    if docker_host.startswith("unix://"):
        if not docker_host.removeprefix("unix://").startswith("/"):
            given.problems.append(f"DOCKER_HOST: {docker_host!r} needs an absolute socket path")
    else:
        if reason := _url_problem(docker_host, ("unix", "tcp")):
            given.problems.append(
                f"DOCKER_HOST: unsupported value {_mask_url(docker_host)!r} ({reason})"
            )
        if docker_tls_verify or docker_cert_path:
            given.problems.append(_DOCKER_TLS)
    return {
        "docker_host": docker_host,
        "docker_api_version": docker_api_version,
        "docker_cert_path": docker_cert_path,
        "docker_tls_verify": docker_tls_verify,
    }


def _registration(given: _Given) -> dict[str, Any]:
    """PROTO_VERSION, AGENT_NAME, and FORCE_UNIQUE_REGISTRATION, which needs AGENT_NAME."""
    proto_version = given.parsed("PROTO_VERSION", str)
    if len(proto_version) > 20:
        given.problems.append(f"PROTO_VERSION: {proto_version!r} is longer than 20 characters")
    agent_name = (given.text("AGENT_NAME") or "").strip() or None
    if agent_name and len(agent_name) > 255:
        given.problems.append(f"AGENT_NAME: {len(agent_name)} characters, at most 255 allowed")
    force_unique = given.parsed("FORCE_UNIQUE_REGISTRATION", _parse_bool)
    if force_unique and not agent_name:
        given.problems.append("FORCE_UNIQUE_REGISTRATION=true requires AGENT_NAME to be set")
    return {
        "proto_version": proto_version,
        "agent_name": agent_name,
        "force_unique_registration": force_unique,
    }


def _reconnect(given: _Given) -> dict[str, Any]:
    """RECONNECT_INITIAL (greater than 0) and RECONNECT_MAX (at least RECONNECT_INITIAL)."""
    reconnect_initial = given.parsed("RECONNECT_INITIAL", _parse_duration)
    reconnect_max = given.parsed("RECONNECT_MAX", _parse_duration)
    both_parsed = not given.failed & {"RECONNECT_INITIAL", "RECONNECT_MAX"}
    if reconnect_initial <= 0:
        given.problems.append(
            f"RECONNECT_INITIAL: must be greater than 0, got {given.text('RECONNECT_INITIAL')}"
        )
    elif reconnect_max < reconnect_initial and both_parsed:
        given.problems.append(
            f"RECONNECT_MAX ({given.text('RECONNECT_MAX')}) must be at least "
            f"RECONNECT_INITIAL ({given.text('RECONNECT_INITIAL')})"
        )
    return {"reconnect_initial": reconnect_initial, "reconnect_max": reconnect_max}


def _storage(given: _Given) -> dict[str, Any]:
    """DATA_PATH (absolute) and the stacks directories (default: ``$DATA_PATH/stacks``)."""
    data_path = given.parsed("DATA_PATH", str)
    if not os.path.isabs(data_path):
        given.problems.append(
            f"DATA_PATH: {data_path!r} must be an absolute path, e.g. /data (a mounted volume)"
        )
    return {
        "data_path": data_path,
        "agent_stacks_dir": given.text("AGENT_STACKS_DIR") or os.path.join(data_path, "stacks"),
        "host_stacks_dir": given.text("HOST_STACKS_DIR"),
    }


def _proxies(given: _Given) -> dict[str, Any]:
    """HTTPS_PROXY and HTTP_PROXY (http:// or https://; a password is redacted), NO_PROXY."""
    values: dict[str, Any] = {}
    for name in ("HTTPS_PROXY", "HTTP_PROXY"):
        proxy = values[name.lower()] = given.text(name)
        if proxy:
            if userinfo := _USERINFO.search(proxy):
                register_secret(userinfo[2])
            if reason := _url_problem(proxy, ("http", "https")):
                given.problems.append(f"{name}: invalid proxy URL {_mask_url(proxy)!r} ({reason})")
    values["no_proxy"] = given.text("NO_PROXY")
    return values


def _log_settings(given: _Given) -> dict[str, Any]:
    """LOG_LEVEL and LOG_JSON (unset: None, decided by whether stderr is a terminal)."""
    log_level = given.parsed("LOG_LEVEL", parse_level)
    log_json: bool | None = None
    if (log_json_text := given.text("LOG_JSON")) is not None:
        try:
            log_json = _parse_bool(log_json_text)
        except ValueError as exc:
            given.problems.append(f"LOG_JSON: {exc}")
    return {"log_level": log_level, "log_json": log_json}


def _updates(given: _Given) -> dict[str, Any]:
    """UPDATE_TIMEOUT, SELF_UPDATE_IMAGE (an image reference), SELF_UPDATE_TIMEOUT (greater
    than 0) and DEPLOY_STOP_TIMEOUT (not negative)."""
    update_timeout = given.parsed("UPDATE_TIMEOUT", _parse_duration)
    self_update_image = (given.text("SELF_UPDATE_IMAGE") or "").strip() or None
    if self_update_image:
        try:
            parse_image_ref(self_update_image)
        except ValueError as exc:
            given.problems.append(f"SELF_UPDATE_IMAGE: {exc}")
    self_update_timeout = given.parsed("SELF_UPDATE_TIMEOUT", _parse_duration)
    if self_update_timeout <= 0 and "SELF_UPDATE_TIMEOUT" not in given.failed:
        given.problems.append(
            f"SELF_UPDATE_TIMEOUT: must be greater than 0, got {given.text('SELF_UPDATE_TIMEOUT')}"
        )
    deploy_stop_timeout = given.parsed("DEPLOY_STOP_TIMEOUT", _parse_duration)
    if deploy_stop_timeout < 0 and "DEPLOY_STOP_TIMEOUT" not in given.failed:
        given.problems.append(
            f"DEPLOY_STOP_TIMEOUT: must not be negative, got {given.text('DEPLOY_STOP_TIMEOUT')}"
        )
    return {
        "update_timeout": update_timeout,
        "self_update_image": self_update_image,
        "self_update_timeout": self_update_timeout,
        "deploy_stop_timeout": deploy_stop_timeout,
    }


# --- loading, step 3: the report


def _report(given: _Given, values: dict[str, Any]) -> ConfigReport:
    """The config when no problem was found, and in any case every problem, value and source."""
    sources = tuple(
        (s.name, given.texts[s.name][1] if s.name in given.texts else "default") for s in SETTINGS
    )
    values = {**values, "sources": sources}
    values = {field.name: values[field.name] for field in fields(Config)}  # each one, in order
    return ConfigReport(
        config=None if given.problems else Config(**values),
        problems=tuple(given.problems),
        values=values,
        texts={name: text for name, (text, _) in given.texts.items()},
        sources=dict(sources),
        file_failed=given.file_failed,
    )


# --- command line and --print-config


def add_cli_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--config PATH`` and one flag per setting (``--log-level`` sets dest ``LOG_LEVEL``)."""
    parser.add_argument("--config", metavar="PATH", help="YAML settings file [env DOCKMON_CONFIG]")
    for s in SETTINGS:
        default = f", default {s.default}" if s.default else ""
        parser.add_argument(
            f"--{s.name.lower().replace('_', '-')}",
            dest=s.name,
            default=None,
            metavar=s.kind.upper(),
            help=f"{s.help} [env {s.name}{default}]",
        )


def overrides_from_args(ns: argparse.Namespace) -> dict[str, str]:
    """The setting flags actually given on the command line, keyed by setting name."""
    return {s.name: v for s in SETTINGS if (v := getattr(ns, s.name, None)) is not None}


def _show(setting: Setting, value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, Secret):
        return value.masked()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _seconds_text(value)
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return _mask_url(str(value)) if setting.kind == "url" else str(value)


def settings_markdown() -> str:
    """The README's settings table, generated from SETTINGS (tests keep the README in sync)."""
    rows = ["| Setting | Default | Meaning |", "|---|---|---|"]
    for setting in SETTINGS:
        default = f"`{setting.default}`" if setting.default is not None else "—"
        rows.append(f"| `{setting.name}` | {default} | {setting.help.replace('|', '/')} |")
    return "\n".join(rows)


def example_yaml() -> str:
    """deploy/agent.example.yaml, generated from SETTINGS: every setting, commented out."""
    lines = [
        "# dockmon-agent configuration file (--config PATH or DOCKMON_CONFIG=PATH).",
        "# Every setting can also be an environment variable of the same name (which wins over",
        "# this file) or a command-line flag (which wins over both). Generated from the code:",
        "#   python -c 'import agent_config, sys; sys.stdout.write(agent_config.example_yaml())'",
        "",
    ]
    for setting in SETTINGS:
        lines.append(f"# {setting.help}")
        value = setting.default if setting.default is not None else ""
        lines.append(f"# {setting.name.lower()}: {value}".rstrip())
        lines.append("")
    lines += [
        "# What the DockMon server may do on this host (enforced by the agent).",
        "# policy:",
        "#   read_only: false            # true: only list/inspect/logs/compose reads",
        "#   allow: []                   # if set, only these operations",
        "#   deny: [shell_session]       # operations refused with a clear error",
        "#   protected_containers:       # may be looked at, never changed or exec'd into",
        "#     names: ['dockmon*', 'db-*']",
        "#     labels: ['com.example.protected=true']",
        "#   audit_log: true             # one JSON line per request in $DATA_PATH/audit.log",
    ]
    return "\n".join(lines) + "\n"


def format_config(cfg: Config) -> str:
    """``NAME=value  # source`` per setting; secrets and URL passwords masked, unset empty."""
    sources = dict(cfg.sources)
    return "\n".join(
        f"{s.name}={_show(s, getattr(cfg, s.name.lower()))}  # {sources[s.name]}" for s in SETTINGS
    )


def format_report(report: ConfigReport) -> str:
    """``--print-config`` for any configuration, valid or not.

    Like ``format_config``, but a setting with a problem shows the text it was given (masked if
    secret) and ``INVALID: <why>``; problems that name no single setting are listed after.
    """
    lines = []
    for s in SETTINGS:
        source = report.sources.get(s.name, "default")
        own = report.problems_of(s.name)
        if not own:
            value = _show(s, report.values.get(s.name.lower()))
            lines.append(f"{s.name}={value}  # {source}")
            continue
        given = report.texts.get(s.name)
        if given is None:
            shown = ""
        elif s.secret:
            shown = Secret(given).masked()
        else:
            shown = _mask_url(given) if s.kind == "url" else given
        reasons = "; ".join(p.removeprefix(f"{s.name}: ") for p in own)
        lines.append(f"{s.name}={shown}  # {source}; INVALID: {reasons}")
    for problem in report.problems:
        if problem_setting(problem) is None:
            lines.append(f"# INVALID: {problem}")
    return "\n".join(lines)
