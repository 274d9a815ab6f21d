"""``dockmon-agent``: load configuration, check the basics, run the supervised actors."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

import agent_config
from actors.errors import ConfigError, FatalError
from actors.host.privileges import PrivilegeError, drop_privileges
from actors.rules.health import health_verdict, read_status

# The actors, docker-py and pykka load where the agent runs (main, build_specs), not here:
# ``dockmon-agent healthcheck``, which Docker runs every 30 s, only reads one JSON file.
if TYPE_CHECKING:
    import argparse

    from actors.base import Clock
    from actors.deploy import engine as compose_engine
    from actors.link.websocket import LinkSettings
    from messages.roles import Role, Subscriber
    from messages.wire import AgentIdentity
    from supervisor import ChildSpec

log = logging.getLogger("dockmon_agent")

#: a status file older than this means the agent process is gone or hung
STATUS_STALE_AFTER = 60.0


def agent_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("dockmon-agent")
    except metadata.PackageNotFoundError:
        return "dev"


#: what ``register`` reports after the package version (README, "The version DockMon shows")
REGISTERED_SUFFIX = "-python"


def registered_version() -> str:
    """The ``version`` sent at registration: ``0.1.0-python``, not ``0.1.0``.

    DockMon compares it with the Go agent's latest release (PROTOCOL §7.2) using PEP 440
    (``packaging.version.parse``): a plain ``0.1.0`` would parse as older than every Go release
    and show "update available" forever, with an Update button that installs the Go agent.
    ``0.1.0-python`` does not parse, which the backend treats as "no update known": the UI shows
    the truth, this agent's own version, and no false badge.
    """
    return f"{agent_version()}{REGISTERED_SUFFIX}"


_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def agent_arch() -> str:
    import platform

    machine = platform.machine().lower()
    return _ARCH.get(machine, "arm" if machine.startswith("arm") else machine)


def capabilities(
    *, self_update: bool = False, compose: bool = False
) -> tuple[tuple[str, bool], ...]:
    """Only what this agent really implements (the backend reads self_update, multi_env_files).

    ``self_update``: running in a container with SELF_UPDATE_IMAGE set (see ``identity``).
    ``compose``: the Docker Compose binary ran at startup (deploy_compose works).
    """
    return (
        ("container_operations", True),
        ("container_updates", True),
        ("event_streaming", True),
        ("stats_collection", True),
        ("self_update", self_update),
        ("compose_deployments", compose),
        ("shell_access", True),
        ("multi_env_files", compose),
    )


def identity(
    cfg: agent_config.Config, own_container_id: str | None = None, *, compose: bool = False
) -> AgentIdentity:
    import socket

    from messages.wire import AgentIdentity

    return AgentIdentity(
        version=registered_version(),
        proto_version=cfg.proto_version,
        capabilities=capabilities(
            self_update=bool(own_container_id and cfg.self_update_image), compose=compose
        ),
        agent_name=cfg.agent_name,
        force_unique_registration=cfg.force_unique_registration,
        os_hostname=socket.gethostname(),
        agent_os=sys.platform if sys.platform != "linux2" else "linux",
        agent_arch=agent_arch(),
    )


def shutdown_deadline(cfg: agent_config.Config) -> float:
    """How long an orderly stop may take: 10 s, plus the wait for running deployments."""
    from actors.deploy.control import KILL_GRACE

    return 10.0 + cfg.deploy_stop_timeout + 3 * KILL_GRACE


def link_settings_for(cfg: agent_config.Config) -> LinkSettings:
    """How the Connection dials DockMon; ``doctor`` uses the same settings."""
    from actors.link.websocket import LinkSettings

    return LinkSettings(
        url=cfg.ws_url,
        insecure_skip_verify=cfg.insecure_skip_verify,
        ca_cert=cfg.ca_cert,
        https_proxy=cfg.https_proxy,
        http_proxy=cfg.http_proxy,
        no_proxy=cfg.no_proxy,
    )


class Fanouts(NamedTuple):
    """Who the emitters tell (the composition root's lists; only the gateway must be running)."""

    #: told LinkStateChanged when the DockMon connection comes up or goes down (each if it runs)
    link: tuple[Role, ...]
    #: told each new container event first, from the EventStreamer's reader: sends it to DockMon
    event_forward: Subscriber
    #: told afterwards, off the forwarding path: the gateway keeps its caches, stats streams
    #: follow start/die (§5.2)
    events: tuple[Subscriber, ...]


def fanouts() -> Fanouts:
    from messages.docker import CACHE_ACTIONS, STATS_ACTIONS
    from messages.roles import Role, Subscriber

    return Fanouts(
        link=(Role.UPDATER, Role.DEPLOYER, Role.STATS, Role.SHELL, Role.HEALTH_CHECKS),
        event_forward=Subscriber(Role.CONNECTION, optional=True),
        events=(
            Subscriber(Role.DOCKER_GATEWAY, actions=CACHE_ACTIONS),
            Subscriber(Role.STATS, optional=True, actions=STATS_ACTIONS),
        ),
    )


def build_specs(
    cfg: agent_config.Config,
    *,
    own_container_id: str | None = None,
    clock: Clock | None = None,
    link_settings: LinkSettings | None = None,
    compose: compose_engine.ComposeProbe | None = None,
) -> list[ChildSpec]:
    """The agent's children in start order (STYLE §3).

    ``compose``: the compose engine probe; None runs ``docker-compose version`` here, once.
    """
    from actors.base import SystemClock
    from actors.commands.tools import HandlerSettings
    from actors.connection import ConnectionActor
    from actors.deploy import engine as compose_engine
    from actors.deploy.control import KILL_GRACE, RunSettings
    from actors.deployer import DeployerActor, DeployerSettings, DeployRuns, in_container
    from actors.docker_gateway import DockerGatewayActor
    from actors.event_streamer import EventCursor, EventStreamerActor
    from actors.flows.context import FlowRegistry, UpdaterSettings
    from actors.health_checks import HealthCheckActor, HealthCheckMemory
    from actors.link.ingest import ingest_settings
    from actors.rules.policy import AuditLog
    from actors.shell import ShellActor
    from actors.stats import StatsActor, StatsSettings
    from actors.status import StatusReporterActor
    from actors.telemetry.stats_math import host_roots
    from actors.token_store import TokenStoreActor
    from actors.updater import UpdaterActor
    from messages.roles import Role
    from supervisor import ChildSpec

    cursor = EventCursor((clock or SystemClock()).time_ns())
    wiring = fanouts()
    settings = link_settings or link_settings_for(cfg)
    probe = compose if compose is not None else compose_engine.probe()
    if probe.available:
        log.info("deploy_compose runs %s", probe.describe())
    else:
        log.warning("deploy_compose is unavailable: %s", probe.describe())
    ident = identity(cfg, own_container_id, compose=probe.available)
    audit = (
        AuditLog(Path(cfg.data_path) / "audit.log", who=f"dockmon@{urlsplit(cfg.ws_url).netloc}")
        if cfg.policy.audit
        else None
    )
    flows = FlowRegistry()
    health_memory = HealthCheckMemory()
    updater_settings = UpdaterSettings(
        docker_host=cfg.docker_host,
        docker_api_version=cfg.docker_api_version,
        data_path=cfg.data_path,
        own_container_id=own_container_id,
        self_update_image=cfg.self_update_image,
        handover_timeout=cfg.self_update_timeout,
    )
    deploy_runs = DeployRuns()
    deployer_settings = DeployerSettings(
        run=RunSettings(
            docker_host=cfg.docker_host,
            docker_api_version=cfg.docker_api_version,
            data_path=cfg.data_path,
            stacks_dir=cfg.agent_stacks_dir,
            host_stacks_dir=cfg.host_stacks_dir,
            own_container_id=own_container_id,
            in_container=in_container(own_container_id),
            policy=cfg.policy,
        ),
        stop_timeout=cfg.deploy_stop_timeout,
    )
    stats_settings = StatsSettings(
        docker_host=cfg.docker_host,
        docker_api_version=cfg.docker_api_version,
        host_roots=host_roots(own_container_id),
        ingest=ingest_settings(settings, cfg.dockmon_url),
    )
    return [
        ChildSpec(
            Role.TOKEN_STORE,
            lambda ctx: TokenStoreActor.start(
                ctx,
                data_path=cfg.data_path,
                permanent_token=cfg.permanent_token,
                registration_token=cfg.registration_token,
            ),
        ),
        ChildSpec(
            Role.STATUS,
            lambda ctx: StatusReporterActor.start(
                ctx, data_path=cfg.data_path, version=agent_version()
            ),
        ),
        ChildSpec(
            Role.DOCKER_GATEWAY,
            lambda ctx: DockerGatewayActor.start(
                ctx,
                docker_host=cfg.docker_host,
                own_container_id=own_container_id,
                handler_settings=HandlerSettings(
                    stacks_dir=cfg.agent_stacks_dir, compose_roots=cfg.compose_roots
                ),
                policy=cfg.policy,
                docker_api_version=cfg.docker_api_version,
            ),
        ),
        ChildSpec(
            Role.CONNECTION,
            lambda ctx: ConnectionActor.start(
                ctx,
                settings=settings,
                identity=ident,
                reconnect_initial=cfg.reconnect_initial,
                reconnect_max=cfg.reconnect_max,
                link_subscribers=wiring.link,
                policy=cfg.policy,
                audit=audit,
            ),
        ),
        ChildSpec(
            Role.EVENT_STREAMER,
            lambda ctx: EventStreamerActor.start(
                ctx,
                docker_host=cfg.docker_host,
                cursor=cursor,
                forward_to=wiring.event_forward,
                event_subscribers=wiring.events,
                docker_api_version=cfg.docker_api_version,
            ),
        ),
        ChildSpec(
            Role.UPDATER,
            lambda ctx: UpdaterActor.start(
                ctx, settings=updater_settings, flows=flows, policy=cfg.policy
            ),
        ),
        ChildSpec(
            Role.DEPLOYER,
            lambda ctx: DeployerActor.start(
                ctx, settings=deployer_settings, runs=deploy_runs, engine=probe
            ),
            shutdown_timeout=cfg.deploy_stop_timeout + 3 * KILL_GRACE,
        ),
        ChildSpec(Role.STATS, lambda ctx: StatsActor.start(ctx, settings=stats_settings)),
        ChildSpec(
            Role.SHELL,
            lambda ctx: ShellActor.start(
                ctx,
                docker_host=cfg.docker_host,
                policy=cfg.policy,
                docker_api_version=cfg.docker_api_version,
            ),
        ),
        ChildSpec(
            Role.HEALTH_CHECKS,
            lambda ctx: HealthCheckActor.start(ctx, memory=health_memory),
        ),
    ]


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=description)
    agent_config.add_cli_flags(parser)
    return parser


def _flags(
    argv: Sequence[str], parser: Callable[[], argparse.ArgumentParser]
) -> argparse.Namespace | None:
    """The parsed flags, or None for no arguments (how Docker runs the agent and its
    healthcheck): then no parser is built, and argparse is never loaded."""
    return parser().parse_args(argv) if argv else None


def _report(ns: argparse.Namespace | None) -> agent_config.ConfigReport:
    """The configuration from the environment and the flags; ``None``: what parse_args([])
    gives (no config file flag, no overrides)."""
    if ns is None:
        return agent_config.inspect_config(os.environ)
    return agent_config.inspect_config(
        os.environ, config_path=ns.config, overrides=agent_config.overrides_from_args(ns)
    )


def _print_problems(problems: Sequence[str]) -> None:
    """Every problem, once, as plain text on stderr (logging is not set up yet)."""
    if len(problems) == 1:
        print(f"dockmon-agent: cannot start: {problems[0]}", file=sys.stderr)
        return
    lines = "\n".join(f"  - {p}" for p in problems)
    print(f"dockmon-agent: cannot start, {len(problems)} problems:\n{lines}", file=sys.stderr)


def startup_problems(report: agent_config.ConfigReport) -> list[str]:
    """The configuration's problems plus DATA_PATH's and the token's, all at once.

    DATA_PATH and the token are checked only where the settings they depend on are valid and
    the config file could be read (a token or URL in an unreadable file is not "missing").
    """
    from actors.token_store import check_data_dir, resolve_token

    problems = list(report.problems)
    if report.file_failed or report.problems_of("DATA_PATH"):
        return problems
    values = report.values
    try:
        check_data_dir(values["data_path"])
    except FatalError as exc:
        return [*problems, str(exc)]
    token_settings = ("REGISTRATION_TOKEN", "PERMANENT_TOKEN")
    if any(report.problems_of(n) or report.problems_of(f"{n}_FILE") for n in token_settings):
        return problems
    try:
        resolve_token(values["data_path"], values["permanent_token"], values["registration_token"])
    except ConfigError as exc:
        problems.extend(exc.problems)
    except FatalError as exc:  # a token file that exists but cannot be used (TokenFileError)
        problems.append(str(exc))
    return problems


def _agent_status(
    prog: str, description: str, argv: Sequence[str]
) -> tuple[dict[str, Any], bool, str] | str:
    """The running agent's status.json and health verdict, or why there is none.

    Only DATA_PATH and UNHEALTHY_AFTER matter here: no DOCKMON_URL or token is needed.
    """
    report = _report(_flags(argv, lambda: _parser(prog, description)))
    own = report.problems_of("DATA_PATH") + report.problems_of("UNHEALTHY_AFTER")
    if report.file_failed:
        own = [p for p in report.problems if agent_config.problem_setting(p) is None] + own
    if own:
        return f"invalid configuration: {'; '.join(own)}"
    data_path = str(report.values["data_path"])
    try:
        status = read_status(data_path)
    except (OSError, ValueError) as exc:
        return f"cannot read the agent's status in {data_path}: {exc}"
    healthy, reason = health_verdict(
        status,
        unhealthy_after=float(report.values["unhealthy_after"]),
        stale_after=STATUS_STALE_AFTER,
    )
    return status, healthy, reason


def healthcheck_main(argv: Sequence[str]) -> int:
    """Docker HEALTHCHECK: 0 when registered (or briefly disconnected), 1 otherwise."""
    result = _agent_status(
        "dockmon-agent healthcheck", "Exit 0 if the running agent is healthy, 1 if not.", argv
    )
    if isinstance(result, str):
        print(f"unhealthy: {result}")
        return 1
    _, healthy, reason = result
    print(f"{'healthy' if healthy else 'unhealthy'}: {reason}")
    return 0 if healthy else 1


def status_main(argv: Sequence[str]) -> int:
    """Print the running agent's status for a person."""
    result = _agent_status("dockmon-agent status", "Show the running agent's status.", argv)
    if isinstance(result, str):
        print(f"no status: {result}; is the agent running with this DATA_PATH?")
        return 1
    status, healthy, reason = result
    print(f"health: {'healthy' if healthy else 'UNHEALTHY'} ({reason})")
    for key in sorted(status):
        print(f"{key}: {status[key]}")
    return 0


def doctor_main(argv: Sequence[str]) -> int:
    """Check configuration, Docker, $DATA_PATH and the path to DockMon; 0 unless a check FAILs."""
    parser = _parser(
        "dockmon-agent doctor",
        "Check this host's setup step by step (configuration, Docker socket, DATA_PATH, DNS, "
        "TCP, proxy, TLS, WebSocket upgrade) without registering: no token is used. "
        "Exit code 0 unless a check FAILs (WARN does not fail).",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="time limit for each network step (default 10)",
    )
    ns = parser.parse_args(argv)
    from actors.doctor import diagnostics  # only `doctor` needs it: keeps the agent's RSS down

    return diagnostics.run(
        os.environ,
        config_path=ns.config,
        overrides=agent_config.overrides_from_args(ns),
        link_settings=link_settings_for,
        timeout=ns.timeout,
        out=sys.stdout,
        version=agent_version(),
    )


SUBCOMMANDS = {"healthcheck": healthcheck_main, "status": status_main, "doctor": doctor_main}


def _agent_parser() -> argparse.ArgumentParser:
    parser = _parser(
        "dockmon-agent",
        "Connects this Docker host to a DockMon server (outbound WebSocket only). "
        f"Subcommands: {', '.join(SUBCOMMANDS)}.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration (tokens masked) and exit",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # First of all: started as root (the image's default), become RUN_AS before anything reads
    # configuration, token files or the Docker socket (actors/host/privileges.py).
    try:
        privileges = drop_privileges(
            os.environ, repair_data=not args or args[0] not in ("healthcheck", "status")
        )
    except PrivilegeError as exc:
        print(f"dockmon-agent: cannot start: {exc}", file=sys.stderr)
        return 2
    if args and args[0] in SUBCOMMANDS:
        return SUBCOMMANDS[args[0]](args[1:])
    ns = _flags(args, _agent_parser)
    if ns is not None and ns.version:
        print(f"dockmon-agent {agent_version()}")
        return 0
    report = _report(ns)
    if ns is not None and ns.print_config:
        print(agent_config.format_report(report))
        if report.problems:
            _print_problems(report.problems)
            return 2
        return 0
    problems = startup_problems(report)
    if problems or report.config is None:
        _print_problems(problems)
        return 2
    cfg = report.config
    from actors.docker_gateway import detect_own_container_id
    from actors.runtime.logs import setup_logging
    from actors.runtime.memory import tune_allocator
    from supervisor import Supervisor

    tune_allocator(os.environ)  # before any thread starts (actors/runtime/memory.py)

    setup_logging(cfg.log_level, cfg.log_json)
    for level, note in privileges.notes:
        log.log(level, "%s", note)
    own_id = detect_own_container_id()
    log.info(
        "dockmon-agent %s starting (docker %s%s)",
        agent_version(),
        cfg.docker_host,
        f", in container {own_id}" if own_id else "",
    )
    return Supervisor(
        build_specs(cfg, own_container_id=own_id), shutdown_deadline=shutdown_deadline(cfg)
    ).run()


if __name__ == "__main__":
    sys.exit(main())
