"""Compose files: ``scan_compose_dirs`` and ``read_compose_file`` (PROTOCOL §8.2, §8.3, §12).

Everything here is plain filesystem logic (no Docker); the two handlers at the bottom run it on
a DockerGateway worker thread.

Confinement (our addition to the Go agent): every path is resolved (``..`` and symlinks) *before*
it is checked, and must then lie inside one of the allowed roots and outside the system
directories of §8.2. The roots are exactly ``COMPOSE_ROOTS`` when it is set, otherwise the stacks
directory plus the default scan roots of §8.2 that exist. Files are opened with ``O_NOFOLLOW``
and the opened descriptor's real path is checked again, so a path swapped for a symlink between
the check and the open is still refused.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import yaml

from actors.commands.tools import DockerTools, Handler, HandlerSettings, succeeded
from actors.rules.paths import is_inside, is_system_path
from messages.common import RawJson
from messages.compose import DEFAULT_MAX_DEPTH, ReadComposeFile, ScanComposeDirs
from messages.docker import CommandFailed, CommandSucceeded, Reply
from messages.records import record
from messages.timefmt import rfc3339_nano

log = logging.getLogger(__name__)

MAX_FILE_SIZE = 1024 * 1024  # compose and env files (§8.3)
COMPOSE_NAMES = frozenset(
    {"docker-compose.yml", "docker-compose.yaml", "compose.yml", "compose.yaml"}
)
SKIPPED_DIRS = frozenset(
    {"node_modules", "vendor", "__pycache__", "venv", "dist", "build", "target"}
)
#: the Go agent's scan defaults (§8.2): always listed, then the optional ones that exist
DEFAULT_SCAN_ROOTS = ("/opt", "/srv", "/var/lib/docker-compose", "/var/lib/docker/volumes")
OPTIONAL_SCAN_ROOTS = ("/stacks", "/docker", "/mnt", "/data", "/compose")
#: a scan stops walking (and answers with what it found) after this long; the backend waits 60 s
SCAN_BUDGET_S = 45.0
#: a scan reports at most this many compose files (the answer must fit in one frame)
MAX_SCAN_RESULTS = 5000
#: read_compose_file reads at most this many env files (each up to 1 MiB) for one compose file
MAX_ENV_FILES = 64

PATH_NOT_ALLOWED = "Path not allowed"
NOT_A_COMPOSE_FILE = "Not a compose file"
IS_A_SYMLINK = "Compose file is a symlink"
IS_A_DIRECTORY = "Path is a directory, not a file"
NOT_FOUND = "File not found or not accessible"
NOT_A_REGULAR_FILE = "Not a regular file"
TOO_LARGE = "File too large (max 1MB)"
READ_FAILED = "Failed to read file"
NOT_ABSOLUTE = "Path must be absolute"

_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Refused(Exception):
    """A path the agent will not scan or read; the message is the error sent back."""

    def __init__(self, message: str, *, system: bool = False) -> None:
        super().__init__(message)
        #: refused as a system path (rather than as outside the roots)
        self.system = system


# --- paths and roots --------------------------------------------------------------------------


def is_compose_name(name: str) -> bool:
    return name.lower() in COMPOSE_NAMES


def allowed_roots(
    settings: HandlerSettings,
    *,
    home: str | None = None,
    isdir: Callable[[str], bool] = os.path.isdir,
) -> tuple[str, ...]:
    """The resolved directories scan and read may touch, in scan order, without duplicates.

    ``COMPOSE_ROOTS`` when set (exactly those); otherwise the stacks directory plus the §8.2
    defaults (/opt, /srv, /var/lib/docker-compose, /var/lib/docker/volumes, the home directory,
    /stacks, /docker, /mnt, /data, /compose) that exist. Roots that resolve into a system
    directory are dropped; so is a default root that resolves to ``/`` (e.g. a home of ``/``).
    """
    explicit = settings.compose_roots is not None
    if settings.compose_roots is not None:
        candidates: list[str] = list(settings.compose_roots)
    else:
        home = os.path.expanduser("~") if home is None else home
        defaults = [*DEFAULT_SCAN_ROOTS, home, *OPTIONAL_SCAN_ROOTS]
        candidates = [settings.stacks_dir] if settings.stacks_dir else []
        candidates += [p for p in defaults if os.path.isabs(p) and isdir(p)]
    roots: list[str] = []
    for candidate in candidates:
        if not os.path.isabs(candidate):
            continue
        resolved = os.path.realpath(candidate)
        if is_system_path(candidate) or is_system_path(resolved):
            log.warning("compose root %s is a system directory: ignored", candidate)
            continue
        if resolved == "/" and not explicit:
            continue
        if resolved not in roots:
            roots.append(resolved)
    return tuple(roots)


def _outside(path: str, roots: Sequence[str]) -> str:
    where = ", ".join(roots) if roots else "none exist"
    return (
        f"{PATH_NOT_ALLOWED}: {path} is outside the agent's compose roots ({where}); "
        "set COMPOSE_ROOTS on the agent to change them"
    )


def confine(path: str, roots: Sequence[str], *, resolve_last: bool = True) -> str:
    """The resolved form of ``path`` if scan/read may use it, else raise ``Refused``.

    ``resolve_last=False`` resolves only the directory part, so a final symlink stays visible
    (read refuses it with its own message). Requests name the path they refuse.
    """
    if not os.path.isabs(path):
        raise Refused(f"{NOT_ABSOLUTE}: {path}")
    if "\x00" in path:
        raise Refused(f"{PATH_NOT_ALLOWED}: {path!r}", system=True)
    if is_system_path(path):
        raise Refused(f"{PATH_NOT_ALLOWED}: {path} is a system directory", system=True)
    if resolve_last:
        resolved = os.path.realpath(path)
    else:
        head, tail = os.path.split(path)
        resolved = os.path.join(os.path.realpath(head), tail) if tail else os.path.realpath(head)
    if is_system_path(resolved):
        raise Refused(f"{PATH_NOT_ALLOWED}: {path} resolves into a system directory", system=True)
    if not any(is_inside(resolved, root) for root in roots):
        raise Refused(_outside(path, roots))
    return resolved


# --- guarded reads ----------------------------------------------------------------------------


@record
class _Read:
    """Outcome of a guarded read: ``data`` on success, else one of the §8.3 error texts."""

    data: bytes | None = None
    error: str = ""
    missing: bool = False


def _fd_path(fd: int) -> str | None:
    """The real path of an open descriptor (Linux /proc), or None where that is unavailable."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def read_guarded(path: str, roots: Sequence[str]) -> _Read:
    """Read a regular file of at most 1 MiB that is not a symlink and lies inside ``roots``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return _Read(error=NOT_FOUND, missing=True)
    except OSError:
        return _Read(error=NOT_FOUND)
    if stat.S_ISLNK(st.st_mode):
        return _Read(error=IS_A_SYMLINK)
    if stat.S_ISDIR(st.st_mode):
        return _Read(error=IS_A_DIRECTORY)
    if not stat.S_ISREG(st.st_mode):
        return _Read(error=NOT_A_REGULAR_FILE)
    if st.st_size > MAX_FILE_SIZE:
        return _Read(error=TOO_LARGE)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return _Read(error=IS_A_SYMLINK)
        if exc.errno == errno.ENOENT:
            return _Read(error=NOT_FOUND, missing=True)
        return _Read(error=READ_FAILED)
    with contextlib.closing(os.fdopen(fd, "rb")) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return _Read(error=NOT_A_REGULAR_FILE)
        real = _fd_path(f.fileno())
        if real is not None and (
            is_system_path(real) or not any(is_inside(real, r) for r in roots)
        ):  # something was swapped under us after the checks
            return _Read(error=PATH_NOT_ALLOWED)
        try:
            data = f.read(MAX_FILE_SIZE + 1)
        except OSError:
            return _Read(error=READ_FAILED)
    if len(data) > MAX_FILE_SIZE:
        return _Read(error=TOO_LARGE)
    return _Read(data=data)


def _text(data: bytes) -> str:
    """Like Go's JSON encoding of a byte string: invalid UTF-8 becomes U+FFFD."""
    return data.decode("utf-8", errors="replace")


def _load_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_YAML_LOADER)
    except (yaml.YAMLError, RecursionError, ValueError):
        return None


# --- scan -------------------------------------------------------------------------------------


def describe_compose_file(path: str, roots: Sequence[str]) -> dict[str, Any] | None:
    """The scan entry of one compose file, or None if it is no valid compose file (§8.2)."""
    read = read_guarded(path, roots)
    if read.data is None:
        log.debug("skipping %s: %s", path, read.error)
        return None
    doc = _load_yaml(_text(read.data))
    services = doc.get("services") if isinstance(doc, dict) else None
    if not isinstance(services, dict) or not services:
        log.debug("skipping %s: no services", path)
        return None
    name = doc.get("name")
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return {
        "path": path,
        "project_name": name
        if isinstance(name, str) and name
        else os.path.basename(os.path.dirname(path)),
        "services": [str(service) for service in services],
        "size": st.st_size,
        "modified": rfc3339_nano(st.st_mtime_ns),
    }


def scan_paths(requested: Iterable[str], roots: Sequence[str]) -> list[str]:
    """The resolved directories to scan: every root, then each requested path (confined).

    A requested path outside the roots or in a system directory raises ``Refused``.
    """
    paths = dict.fromkeys(roots)  # ordered, and a membership test in O(1)
    for path in requested:
        paths.setdefault(confine(path, roots))
    return list(paths)


def scan_compose_dirs(
    requested: Iterable[str],
    roots: Sequence[str],
    *,
    recursive: bool,
    max_depth: int,
    budget_s: float = SCAN_BUDGET_S,
    monotonic: Callable[[], float] = time.monotonic,
) -> list[dict[str, Any]]:
    """Compose files under the roots and requested paths (§8.2), each listed once.

    Depth 0 is the scanned directory itself; subdirectories are entered only when
    ``recursive``, down to ``max_depth`` (<= 0 means 5). Hidden and build/vendor directories,
    symlinks and system directories are skipped. Paths are reported resolved.
    """
    max_depth = max_depth if max_depth > 0 else DEFAULT_MAX_DEPTH
    deadline = monotonic() + budget_s
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    for base in scan_paths(requested, roots):
        if not os.path.isdir(base):
            continue
        stack: list[tuple[str, int]] = [(base, 0)]
        while stack:
            if monotonic() > deadline:
                log.warning("compose scan stopped after %.0f s; results are partial", budget_s)
                return found
            directory, depth = stack.pop()
            subdirs: list[str] = []
            try:
                with os.scandir(directory) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                log.debug("cannot read %s: %s", directory, exc.strerror)
                continue
            for entry in entries:
                try:  # symlinks are neither dirs nor files here: never followed
                    if entry.is_dir(follow_symlinks=False):
                        if (
                            recursive
                            and depth < max_depth
                            and not entry.name.startswith(".")
                            and entry.name not in SKIPPED_DIRS
                            and not is_system_path(entry.path)
                        ):
                            subdirs.append(entry.path)
                    elif (
                        entry.is_file(follow_symlinks=False)
                        and is_compose_name(entry.name)
                        and entry.path not in seen
                    ):
                        seen.add(entry.path)
                        if info := describe_compose_file(entry.path, roots):
                            found.append(info)
                            if len(found) >= MAX_SCAN_RESULTS:
                                log.warning(
                                    "compose scan stopped at %d compose files; results are partial",
                                    MAX_SCAN_RESULTS,
                                )
                                return found
                except OSError:
                    continue
            stack.extend((sub, depth + 1) for sub in reversed(subdirs))
    return found


# --- read -------------------------------------------------------------------------------------


def _bare_name(ref: str) -> str | None:
    """``ref`` as a file name in the compose file's directory, or None if it points elsewhere."""
    name = ref
    while name.startswith("./"):
        name = name[2:]
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        return None
    return name


def env_file_refs(compose: Any) -> list[str]:
    """Every service-level ``env_file`` reference, in order, once each.

    A reference is a string, a ``{path: ...}`` object, or a list of either.
    """
    refs: dict[str, None] = {}  # ordered, and a membership test in O(1)
    services = compose.get("services") if isinstance(compose, dict) else None
    if not isinstance(services, dict):
        return []
    for service in services.values():
        value = service.get("env_file") if isinstance(service, dict) else None
        items = value if isinstance(value, list) else [value]
        for item in items:
            ref = item.get("path") if isinstance(item, dict) else item
            if isinstance(ref, str) and ref:
                refs.setdefault(ref)
    return list(refs)


def read_env_files(
    directory: str, compose: Any, roots: Sequence[str]
) -> tuple[dict[str, str], list[str]]:
    """``env_files`` and ``skipped_env_files`` of §8.3 for a compose file in ``directory``."""
    env_files: dict[str, str] = {}
    skipped: dict[str, None] = {}  # ordered, and a membership test in O(1)
    dot_env = read_guarded(os.path.join(directory, ".env"), roots)
    if dot_env.data is not None:
        env_files[".env"] = _text(dot_env.data)
    over = 0
    for ref in env_file_refs(compose):
        name = _bare_name(ref)
        if name is None:
            skipped.setdefault(ref)
            continue
        if name in env_files:
            continue
        if name != ".env" and len(env_files) >= MAX_ENV_FILES:
            skipped.setdefault(ref)  # the answer must stay one readable frame
            over += 1
            continue
        read = dot_env if name == ".env" else read_guarded(os.path.join(directory, name), roots)
        if read.data is not None:
            env_files[name] = _text(read.data)
        elif read.missing:
            env_files[name] = ""
        else:
            skipped.setdefault(ref)
    if over:
        log.warning(
            "read_compose_file: %s references more than %d env files; %d skipped",
            directory,
            MAX_ENV_FILES,
            over,
        )
    return env_files, list(skipped)


def read_compose_file(path: str, roots: Sequence[str]) -> dict[str, Any]:
    """The ``read_compose_file`` result of §8.3 (success or ``success: false`` with an error)."""

    def failed(error: str) -> dict[str, Any]:
        return {"success": False, "path": path, "error": error}

    if not os.path.isabs(path):
        return failed(NOT_ABSOLUTE)
    if "\x00" in path or is_system_path(path):
        return failed(PATH_NOT_ALLOWED)
    if not is_compose_name(os.path.basename(path)):
        return failed(NOT_A_COMPOSE_FILE)
    try:
        resolved = confine(path, roots, resolve_last=False)
    except Refused as exc:
        return failed(PATH_NOT_ALLOWED if exc.system else str(exc))
    read = read_guarded(resolved, roots)
    if read.data is None:
        return failed(read.error)
    content = _text(read.data)
    env_files, skipped = read_env_files(os.path.dirname(resolved), _load_yaml(content), roots)
    result: dict[str, Any] = {"success": True, "path": path, "content": content}
    if ".env" in env_files:
        result["env_content"] = env_files[".env"]
    result["env_files"] = env_files
    result["skipped_env_files"] = skipped
    return result


# --- handlers (DockerGateway worker threads) --------------------------------------------------


def _scan(tools: DockerTools, msg: ScanComposeDirs) -> Reply:
    roots = allowed_roots(tools.settings)
    try:
        files = scan_compose_dirs(
            msg.paths, roots, recursive=msg.recursive, max_depth=msg.max_depth
        )
    except Refused as exc:
        log.info("scan_compose_dirs refused: %s", exc)
        return CommandFailed(
            request_id=msg.request_id, error=str(exc), error_type="permission_denied"
        )
    log.info("scan_compose_dirs found %d compose file(s) under %s", len(files), ", ".join(roots))
    return CommandSucceeded(
        request_id=msg.request_id,
        payload=RawJson.of({"success": True, "compose_files": files}),
    )


def _read(tools: DockerTools, msg: ReadComposeFile) -> Reply:
    result = read_compose_file(msg.path, allowed_roots(tools.settings))
    if result["success"]:
        log.info("read_compose_file %s: ok", msg.path)
    else:
        log.info("read_compose_file %s refused: %s", msg.path, result["error"])
    return succeeded(msg.request_id, result)


HANDLERS: dict[type, Handler] = {ScanComposeDirs: _scan, ReadComposeFile: _read}
