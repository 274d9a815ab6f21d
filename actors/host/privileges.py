"""Start as root only long enough to prepare, then run as an ordinary user (the image's way).

DockMon's own ``docker run`` starts the agent container as root with the Docker socket mounted
and nothing else. ``agent_cli.main`` calls :func:`drop_privileges` first, before configuration,
logging or any Docker client exists. When the process is root and ``RUN_AS`` names a user (the
image sets ``RUN_AS=1000``), it:

1. reads the group of the Docker socket (``DOCKER_HOST`` or the first default socket that
   exists) and keeps it as a supplementary group, with any group given by ``--group-add``;
2. repairs ``$DATA_PATH`` (``/data``): every entry not owned by the user becomes the user's,
   with ``lchown`` and without following symlinks, entering other filesystems or touching files
   with more than one hard link, so a volume first used by root or by another image works;
3. drops root in-process: ``setgroups``, ``setgid``, ``setuid`` (which clears every capability),
   sets ``no_new_privs`` and checks that root cannot be regained.

Not root (``--user 1000 --group-add <gid>``, systemd's ``User=``): nothing to do. ``RUN_AS=root``
keeps root on purpose (logged as a warning). Root is never kept silently: without ``RUN_AS`` a
warning says so, and a drop that fails (no CAP_SETUID/CAP_SETGID) refuses to start.

Special cases: a socket only its non-root owner may use (rootless Docker or Podman) makes the
agent run as that owner; a socket only root may use, inside a rootless runtime's user namespace
(where uid 0 is not root on the host), keeps uid 0 there, and says so.

Only the standard library is used here, and nothing is logged: the notes go back to the caller,
which logs them once logging is set up.
"""

from __future__ import annotations

import ctypes
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

#: the sockets tried, in order, when DOCKER_HOST is not set (PROTOCOL §10)
DEFAULT_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock", "/run/podman/podman.sock")
ROOT_WORDS = frozenset({"root", "0", "0:0"})
_PR_SET_NO_NEW_PRIVS = 38


class PrivilegeError(Exception):
    """Root could not be given up as asked: the agent must not start."""


@dataclass
class Outcome:
    """What happened; ``notes`` are (logging level, message) to log once logging exists."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    dropped: bool = False
    notes: list[tuple[int, str]] = field(default_factory=list)


def docker_socket(environ: Mapping[str, str]) -> str | None:
    host = environ.get("DOCKER_HOST", "")
    if host:
        parts = urlsplit(host)
        return parts.path or None if parts.scheme == "unix" else None
    return next((p for p in DEFAULT_SOCKETS if os.path.exists(p)), DEFAULT_SOCKETS[0])


def parse_run_as(text: str) -> tuple[int, int]:
    """``1000`` or ``1000:1000`` -> (uid, gid); the gid defaults to the uid."""
    uid_text, _, gid_text = text.partition(":")
    try:
        uid = int(uid_text)
        gid = int(gid_text) if gid_text else uid
    except ValueError:
        raise PrivilegeError(
            f"RUN_AS={text!r} is not a numeric uid[:gid] (the image uses RUN_AS=1000), or "
            "'root' to run as root knowingly"
        ) from None
    if uid <= 0 or gid < 0:
        raise PrivilegeError(f"RUN_AS={text!r}: the uid must be positive (or use RUN_AS=root)")
    return uid, gid


def in_user_namespace(proc: str = "/proc") -> bool:
    """True inside a user namespace (a rootless runtime): uid 0 here is not root on the host."""
    try:
        lines = Path(proc, "self", "uid_map").read_text().split("\n")
    except OSError:
        return False
    return [line.split() for line in lines if line.strip()] != [["0", "0", "4294967295"]]


def _grants(st: os.stat_result, uid: int, groups: set[int]) -> bool:
    """Would ``uid`` with ``groups`` be allowed to read and write a file like ``st``?"""
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == uid:
        return mode & 0o600 == 0o600
    if st.st_gid in groups:
        return mode & 0o060 == 0o060
    return mode & 0o006 == 0o006


def repair_data_dir(path: str, uid: int, gid: int) -> tuple[int, list[str]]:
    """Make ``path`` and everything in it ``uid:gid``; returns (entries changed, notes).

    Never follows a symlink (a link itself is ``lchown``-ed), never enters another filesystem
    mounted below ``path``, never changes a file with more than one hard link.
    """
    notes: list[str] = []
    root = Path(path)
    if not root.exists():
        root.mkdir(parents=True, mode=0o700)
    top = os.stat(root)
    changed = 0

    def fix(entry: str, st: os.stat_result) -> None:
        nonlocal changed
        if st.st_uid == uid:
            return
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            notes.append(f"left {entry} as it is: it has {st.st_nlink} hard links")
            return
        os.lchown(entry, uid, gid)
        changed += 1

    fix(str(root), top)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        entered = []
        for name in dirnames:
            entry = os.path.join(dirpath, name)
            st = os.lstat(entry)
            if not stat.S_ISLNK(st.st_mode) and st.st_dev != top.st_dev:
                notes.append(f"left {entry} as it is: another filesystem is mounted there")
                continue
            fix(entry, st)
            if not stat.S_ISLNK(st.st_mode):
                entered.append(name)
        dirnames[:] = entered  # os.walk never follows links; this also skips mount points
        for name in filenames:
            entry = os.path.join(dirpath, name)
            fix(entry, os.lstat(entry))
    return changed, notes


def _set_no_new_privs() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def drop_privileges(environ: Mapping[str, str], *, repair_data: bool = True) -> Outcome:
    """See the module docstring. Raises :class:`PrivilegeError` when it must not go on."""
    if os.geteuid() != 0:
        return Outcome(uid=os.geteuid(), gid=os.getegid(), groups=tuple(os.getgroups()))
    run_as = (environ.get("RUN_AS") or "").strip()
    outcome = Outcome(uid=0, gid=os.getegid(), groups=tuple(os.getgroups()))
    if not run_as:
        outcome.notes.append(
            (
                logging.WARNING,
                "running as root; set RUN_AS=<uid> to run as that user instead (the container "
                "image does this with RUN_AS=1000)",
            )
        )
        return outcome
    if run_as.lower() in ROOT_WORDS:
        outcome.notes.append((logging.WARNING, "running as root because RUN_AS=root"))
        return outcome
    uid, gid = parse_run_as(run_as)

    groups = {g for g in os.getgroups() if g != 0}  # --group-add ones; never root's own group
    socket_path = docker_socket(environ)
    socket_stat: os.stat_result | None = None
    if socket_path is not None:
        try:
            socket_stat = os.stat(socket_path)
        except OSError as exc:
            outcome.notes.append(
                (
                    logging.WARNING,
                    f"cannot see the Docker socket {socket_path} ({exc.strerror}); dropping to "
                    f"uid {uid} without its group",
                )
            )
    if socket_stat is not None:
        groups.add(socket_stat.st_gid)
        if not _grants(socket_stat, uid, groups | {gid}):
            mode = f"{stat.S_IMODE(socket_stat.st_mode):04o}"
            facts = f"owner uid {socket_stat.st_uid}, group {socket_stat.st_gid}, mode {mode}"
            if socket_stat.st_uid != 0:
                outcome.notes.append(
                    (
                        logging.INFO,
                        f"the Docker socket {socket_path} ({facts}) is usable only by its "
                        f"owner (rootless Docker or Podman): running as uid {socket_stat.st_uid}",
                    )
                )
                uid = socket_stat.st_uid
            elif in_user_namespace():
                outcome.notes.append(
                    (
                        logging.WARNING,
                        f"the Docker socket {socket_path} ({facts}) is usable only by uid 0, and "
                        "this container runs in a user namespace (a rootless runtime: uid 0 here "
                        "is an ordinary user on the host): staying uid 0 inside the container",
                    )
                )
                return outcome
            else:
                outcome.notes.append(
                    (
                        logging.WARNING,
                        f"the Docker socket {socket_path} ({facts}) is usable only by root; "
                        f"uid {uid} will get permission denied. Make it group-accessible "
                        "(Docker's default is root:docker 0660), or set RUN_AS=root to run "
                        "as root knowingly",
                    )
                )
        if socket_stat.st_gid == 0 and _grants(socket_stat, uid, {0}):
            outcome.notes.append(
                (
                    logging.INFO,
                    f"the Docker socket {socket_path} belongs to group 0: the agent keeps group "
                    "0 to reach it",
                )
            )
    if repair_data:
        data = environ.get("DATA_PATH") or "/data"
        try:
            changed, notes = repair_data_dir(data, uid, gid)
        except OSError as exc:
            outcome.notes.append(
                (logging.ERROR, f"cannot repair the ownership of {data}: {exc.strerror or exc}")
            )
        else:
            if changed:
                outcome.notes.append(
                    (logging.WARNING, f"{data}: {changed} entries now belong to uid {uid}")
                )
            outcome.notes.extend((logging.WARNING, note) for note in notes)

    final_groups = sorted(groups)
    try:
        os.setgroups(final_groups)
        os.setgid(gid)
        os.setuid(uid)  # real, effective and saved: every capability goes with them
    except OSError as exc:
        raise PrivilegeError(
            f"started as root with RUN_AS={run_as} but cannot drop to uid {uid}: {exc.strerror} "
            "(the container lacks CAP_SETUID/CAP_SETGID, e.g. --cap-drop ALL); refusing to run "
            "as root. Start it as the user instead: docker run --user 1000 --group-add "
            f"$(stat -c %g {socket_path or '/var/run/docker.sock'}) ..., or keep Docker's "
            "default capabilities, or set RUN_AS=root to run as root knowingly"
        ) from exc
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - the kernel said yes: never run like that
        raise PrivilegeError(f"dropped to uid {uid} but could become root again; refusing")
    no_new_privs = _set_no_new_privs()
    home = environ.get("DATA_PATH") or "/data"
    os.environ["HOME"] = home  # docker-py looks for ~/.docker/config.json there
    outcome.uid, outcome.gid, outcome.groups, outcome.dropped = uid, gid, tuple(final_groups), True
    socket_note = f", Docker socket group {socket_stat.st_gid}" if socket_stat is not None else ""
    outcome.notes.insert(
        0,
        (
            logging.INFO,
            f"started as root: now running as uid {uid}, gid {gid}, groups "
            f"{','.join(map(str, final_groups)) or 'none'}{socket_note}"
            f"{'' if no_new_privs else ' (no_new_privs not available)'}",
        ),
    )
    return outcome
