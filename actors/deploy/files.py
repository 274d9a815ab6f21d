"""Stack files under ``$AGENT_STACKS_DIR/<project>/`` (PROTOCOL §8.1 steps 3, 4 and 7, §12).

* The project name must be non-empty, contain no ``/``, ``\\`` or NUL, not be ``.`` or ``..``
  and not start with ``.`` (§8.1); compose's own rule (lowercase letters, digits, ``-`` and
  ``_``, starting with a letter or digit) is checked too, with compose's wording, before
  anything is written.
* ``docker-compose.yml`` is written 0644, the directories 0755; env files 0600.
* Every file is opened relative to the stack directory's descriptor with ``O_NOFOLLOW``: a
  symlink is never followed, neither the stack directory itself nor a file in it.
* ``env_files`` names are bare file names (a leading ``./`` is stripped); all are validated
  before anything is written. Without ``env_files``, ``.env`` holds ``env_file_content`` or is
  deleted when that is empty; with ``env_files`` and no ``.env`` among them, a stale ``.env`` is
  deleted too (it would still be read for interpolation). Other files are left alone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
from collections.abc import Iterator, Sequence

from messages.records import record

COMPOSE_FILE = "docker-compose.yml"
ENV_FILE = ".env"
#: written next to the compose file when bind sources must be rewritten (see mounts.py)
OVERRIDE_FILE = "docker-compose.dockmon-host-paths.yml"
RESERVED_NAMES = frozenset({COMPOSE_FILE, OVERRIDE_FILE})
_COMPOSE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


class StackFileError(Exception):
    """A name or file the agent refuses; the message goes to DockMon."""


def project_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a stack, or None (§8.1 step 3, then compose's rule)."""
    if not name or not name.strip():
        return "invalid project name: it must not be empty"
    if any(ch in name for ch in "/\\\x00"):
        return f"invalid project name {name!r}: it must not contain '/', '\\' or NUL"
    if name in (".", "..") or name.startswith("."):
        return f"invalid project name {name!r}: it must not be '.' or '..' or start with '.'"
    if not _COMPOSE_NAME.fullmatch(name):
        return (
            f'invalid project name "{name}": must consist only of lowercase alphanumeric '
            "characters, hyphens, and underscores as well as start with a letter or number"
        )
    return None


def env_file_name(raw: str) -> str:
    """The validated bare name of an ``env_files`` key (``./x.env`` -> ``x.env``)."""
    name = raw[2:] if raw.startswith("./") else raw
    if not name or name in (".", "..") or any(ch in name for ch in "/\\\x00"):
        raise StackFileError(
            f"invalid env file name {raw!r}: it must be a bare file name in the stack directory"
        )
    if name in RESERVED_NAMES:
        raise StackFileError(f"invalid env file name {raw!r}: it would replace {name}")
    return name


@record
class StackFiles:
    """What :func:`write_stack` wrote."""

    directory: str
    compose_file: str
    env_files: tuple[str, ...]


@contextlib.contextmanager
def _open_dir(path: str) -> Iterator[int]:
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and os.path.islink(path)):
            raise StackFileError(
                f"{path} is a symlink; the agent never writes through one"
            ) from exc
        raise StackFileError(f"cannot open {path}: {exc.strerror or exc}") from exc
    try:
        yield fd
    finally:
        os.close(fd)


def _ensure_dir(path: str) -> None:
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        return
    except OSError as exc:
        raise StackFileError(f"cannot create {path}: {exc.strerror or exc}") from exc
    os.chmod(path, 0o755)  # whatever the umask


def _write_at(dir_fd: int, directory: str, name: str, content: str, mode: int) -> None:
    data = content.encode("utf-8")
    try:
        fd = os.open(name, _WRITE_FLAGS, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StackFileError(
                f"{os.path.join(directory, name)} is a symlink; the agent never writes through one"
            ) from exc
        raise StackFileError(
            f"cannot write {os.path.join(directory, name)}: {exc.strerror or exc}"
        ) from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StackFileError(f"{os.path.join(directory, name)} is not a regular file")
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except OSError as exc:
        raise StackFileError(
            f"cannot write {os.path.join(directory, name)}: {exc.strerror or exc}"
        ) from exc
    finally:
        os.close(fd)


def _remove_at(dir_fd: int, name: str) -> None:
    """Unlink ``name`` (a symlink itself, never its target); a missing file is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def stack_dir(stacks_dir: str, project: str) -> str:
    return os.path.join(stacks_dir, project)


def write_stack(
    stacks_dir: str,
    project: str,
    compose_content: str,
    env_file_content: str,
    env_files: Sequence[tuple[str, str]],
) -> StackFiles:
    """Write the stack's files (the module docstring says how); raise StackFileError."""
    problem = project_name_problem(project)
    if problem:
        raise StackFileError(problem)
    named = [(env_file_name(raw), content) for raw, content in env_files]  # validate all first
    os.makedirs(stacks_dir, mode=0o755, exist_ok=True)
    directory = stack_dir(stacks_dir, project)
    _ensure_dir(directory)
    with _open_dir(directory) as dir_fd:
        _write_at(dir_fd, directory, COMPOSE_FILE, compose_content, 0o644)
        written: list[str] = []
        if named:
            for name, content in named:
                _write_at(dir_fd, directory, name, content, 0o600)
                written.append(name)
            if ENV_FILE not in written:
                _remove_at(dir_fd, ENV_FILE)
        elif env_file_content:
            _write_at(dir_fd, directory, ENV_FILE, env_file_content, 0o600)
            written.append(ENV_FILE)
        else:
            _remove_at(dir_fd, ENV_FILE)
        _remove_at(dir_fd, OVERRIDE_FILE)  # written again by this deploy if it needs one
    return StackFiles(directory, os.path.join(directory, COMPOSE_FILE), tuple(written))


def write_override(directory: str, content: str) -> str:
    """The generated host-path override (0644, no symlink following); returns its path."""
    with _open_dir(directory) as dir_fd:
        _write_at(dir_fd, directory, OVERRIDE_FILE, content, 0o644)
    return os.path.join(directory, OVERRIDE_FILE)


def remove_stack_dir(stacks_dir: str, project: str) -> str | None:
    """Delete the stack directory after ``down`` with ``remove_volumes`` (§8.1 step 7).

    Never through a symlink: a symlinked stack directory is left alone. Returns why nothing
    was removed, or None.
    """
    directory = stack_dir(stacks_dir, project)
    if os.path.islink(directory):
        return f"{directory} is a symlink; it was left in place"
    if not os.path.isdir(directory):
        return None
    try:
        shutil.rmtree(directory)
    except OSError as exc:
        return f"cannot remove {directory}: {exc.strerror or exc}"
    return None
