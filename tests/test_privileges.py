"""Root only long enough to prepare (issue 9, points 1 and 2): actors/host/privileges.py for real.

Dropping privileges is irreversible, so every drop runs in a child process (started as root by
this root test session) that reports what it became: uid, gid, groups, capabilities, whether it
can get root back. ``/data`` repair runs here, on real files, links and a real mount.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.host.privileges import PrivilegeError, in_user_namespace, parse_run_as, repair_data_dir
from tests.support.prerequisites import requires

REPO = Path(__file__).resolve().parent.parent
SOCKET_GID = 2375

pytestmark = requires(os.geteuid() == 0, "dropping privileges needs root")

CHILD = r"""
import json, os, sys
from actors.host.privileges import PrivilegeError, drop_privileges
try:
    outcome = drop_privileges(os.environ)
except PrivilegeError as exc:
    print(json.dumps({"error": str(exc)}))
    sys.exit(0)
status = dict(
    line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line
)
try:
    os.setuid(0)
    regained = True
except PermissionError:
    regained = False
print(json.dumps({
    "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
    "cap_eff": status["CapEff"].strip(), "cap_prm": status["CapPrm"].strip(),
    "no_new_privs": status.get("NoNewPrivs", "").strip(), "regained": regained,
    "home": os.environ.get("HOME"), "dropped": outcome.dropped,
    "notes": [[level, note] for level, note in outcome.notes],
}))
"""


def make_socket(path: Path, uid: int = 0, gid: int = SOCKET_GID, mode: int = 0o660) -> str:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return str(path)


def run_child(env: dict[str, str], **popen: Any) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD],
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **popen,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir(mode=0o700)
    (d / "permanent_token").write_text("tok")
    os.chmod(d / "permanent_token", 0o600)
    return d


def test_root_drops_to_run_as_with_the_sockets_group_and_no_capabilities(
    tmp_path: Path, data: Path
) -> None:
    sock = make_socket(tmp_path / "docker.sock")
    got = run_child({"RUN_AS": "1000", "DOCKER_HOST": f"unix://{sock}", "DATA_PATH": str(data)})
    assert (got["uid"], got["euid"], got["gid"]) == (1000, 1000, 1000)
    assert got["groups"] == [SOCKET_GID]
    assert got["cap_eff"] == got["cap_prm"] == "0000000000000000"
    assert got["regained"] is False and got["dropped"] is True
    assert got["no_new_privs"] == "1"
    assert got["home"] == str(data)
    assert stat.S_IMODE(os.stat(data / "permanent_token").st_mode) == 0o600
    assert os.stat(data / "permanent_token").st_uid == 1000
    first = got["notes"][0][1]
    assert first.startswith("started as root: now running as uid 1000, gid 1000, groups 2375")


def test_groups_given_with_group_add_are_kept_but_never_root(tmp_path: Path, data: Path) -> None:
    sock = make_socket(tmp_path / "docker.sock")
    got = run_child(
        {"RUN_AS": "1000:1001", "DOCKER_HOST": f"unix://{sock}", "DATA_PATH": str(data)},
        extra_groups=[0, 4242],
    )
    assert (got["uid"], got["gid"]) == (1000, 1001)
    assert got["groups"] == [SOCKET_GID, 4242]


def test_a_socket_only_its_owner_may_use_makes_the_agent_that_owner(
    tmp_path: Path, data: Path
) -> None:
    sock = make_socket(tmp_path / "podman.sock", uid=1234, gid=1234, mode=0o600)
    got = run_child({"RUN_AS": "1000", "DOCKER_HOST": f"unix://{sock}", "DATA_PATH": str(data)})
    assert got["uid"] == 1234
    assert any("usable only by its owner" in note for _, note in got["notes"])
    assert os.stat(data / "permanent_token").st_uid == 1234


def test_a_root_only_socket_is_said_loudly(tmp_path: Path, data: Path) -> None:
    sock = make_socket(tmp_path / "docker.sock", gid=0, mode=0o600)
    got = run_child({"RUN_AS": "1000", "DOCKER_HOST": f"unix://{sock}", "DATA_PATH": str(data)})
    assert got["uid"] == 1000  # never root for that: the agent then reports permission denied
    assert any("usable only by root" in note and "RUN_AS=root" in note for _, note in got["notes"])


@pytest.mark.parametrize(("run_as", "why"), [("", "set RUN_AS=<uid>"), ("root", "RUN_AS=root")])
def test_root_is_never_kept_silently(data: Path, run_as: str, why: str) -> None:
    got = run_child({"RUN_AS": run_as, "DATA_PATH": str(data)})
    assert got["uid"] == 0 and got["dropped"] is False
    [(level, note)] = got["notes"]
    assert level == 30 and note.startswith("running as root") and why in note
    assert os.stat(data / "permanent_token").st_uid == 0  # nothing repaired


def _without_setuid() -> None:  # in the child, between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (6, 7):  # CAP_SETGID, CAP_SETUID out of the bounding set: exec loses them
        assert libc.prctl(24, cap, 0, 0, 0) == 0  # PR_CAPBSET_DROP


def test_a_drop_that_fails_refuses_to_start(tmp_path: Path, data: Path) -> None:
    sock = make_socket(tmp_path / "docker.sock")
    result = subprocess.run(
        [sys.executable, "-c", "import sys, agent_cli; sys.exit(agent_cli.main(['--version']))"],
        cwd=REPO,
        env={
            "PATH": os.environ.get("PATH", ""),
            "RUN_AS": "1000",
            "DOCKER_HOST": f"unix://{sock}",
            "DATA_PATH": str(data),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=_without_setuid,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    err = result.stderr
    assert "cannot drop to uid 1000" in err and "refusing to run as root" in err
    assert "--user 1000 --group-add" in err


def test_run_as_must_be_numeric() -> None:
    assert parse_run_as("1000") == (1000, 1000)
    assert parse_run_as("1000:50") == (1000, 50)
    for bad in ("dockmon", "-1", "0:5", "1000:x"):
        with pytest.raises(PrivilegeError):
            parse_run_as(bad)


def test_user_namespace_detection(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "uid_map").write_text("         0          0 4294967295\n")
    assert not in_user_namespace(str(tmp_path))
    (tmp_path / "self" / "uid_map").write_text("         0       1000          1\n")
    assert in_user_namespace(str(tmp_path))


# --------------------------------------------------------------------------------------------
# /data repair


@contextlib.contextmanager
def tmpfs(path: Path) -> Iterator[bool]:
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(path)], check=False).returncode
    try:
        yield mounted == 0
    finally:
        if mounted == 0:
            subprocess.run(["umount", str(path)], check=False)


def test_repair_makes_everything_ours_without_following_links_or_leaving_the_volume(
    tmp_path: Path, data: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("x")
    (outside / "dir").mkdir()
    (outside / "dir" / "file").write_text("x")
    (data / "stacks" / "web").mkdir(parents=True)
    (data / "stacks" / "web" / "compose.yaml").write_text("services: {}\n")
    (data / "link").symlink_to(outside / "secret")
    (data / "dirlink").symlink_to(outside / "dir")
    (data / "dangling").symlink_to(tmp_path / "nowhere")
    (outside / "hard").write_text("x")
    os.link(outside / "hard", data / "hard")
    with tmpfs(data / "mnt") as mounted:
        if mounted:
            (data / "mnt" / "theirs").write_text("x")
        changed, notes = repair_data_dir(str(data), 1000, 1000)
        owners = {
            p.relative_to(data).as_posix(): os.lstat(p).st_uid
            for p in [data, *data.rglob("*")]
            if not str(p).startswith(str(data / "mnt") + "/")
        }
        if mounted:
            assert os.stat(data / "mnt" / "theirs").st_uid == 0
            assert any("another filesystem" in n for n in notes)
        again = repair_data_dir(str(data), 1000, 1000)[0]  # a second pass: nothing left to do
    assert owners.pop("hard") == 0 and any("hard links" in n for n in notes)
    if mounted:
        owners.pop("mnt")
    assert set(owners.values()) == {1000}, owners
    assert changed == len(owners)
    for p in (outside, outside / "secret", outside / "dir", outside / "dir" / "file"):
        assert os.stat(p).st_uid == 0, p  # never followed a link out
    assert again == 0


def test_repair_creates_a_missing_data_path_owned_and_private(tmp_path: Path) -> None:
    target = tmp_path / "new" / "data"
    changed, _ = repair_data_dir(str(target), 1000, 1000)
    st = os.stat(target)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o700)
    assert changed == 1
