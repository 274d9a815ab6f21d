"""TokenStore: token precedence, the atomic 0600 write, and real filesystem failures.

Read-only and full filesystems are real tmpfs mounts (we run as root, so chmod would not stop a
write); those tests skip with a reason when mounting is not possible.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors.base import Peers
from actors.errors import ConfigError, FatalError
from actors.token_store import (
    TOKEN_FILE,
    TokenStoreActor,
    check_data_dir,
    resolve_token,
    write_token_atomic,
)
from agent_config import load_config
from messages.common import Ping, Secret
from messages.supervision import ChildFailed
from messages.tokens import GetToken, SaveToken, TokenInfo
from tests.fakes import FakeClock, FakeScheduler, ProbeHandle, make_ctx

REGISTRATION = "reg-2f0c3d4b5e6f"
PERMANENT_ENV = "perm-env-7c0e2f4a1b9d"
SAVED = "perm-file-4e559a612f0c"
NEW = "perm-new-3d4b5e6f7c0e"

Mount = Callable[..., Path]


@pytest.fixture(autouse=True)
def no_actor_threads_left() -> Iterator[None]:
    """Stop every actor after the test and prove no actor thread survives."""
    before = set(threading.enumerate())
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=5)
    new = [t for t in threading.enumerate() if t not in before]
    for thread in new:
        thread.join(timeout=3)
    alive = [t.name for t in new if t.is_alive()]
    assert not alive, f"threads still alive after the test: {alive}"
    actor_threads = [
        t.name for t in threading.enumerate() if t.name.startswith(("TokenStoreActor", "Probe"))
    ]
    assert not actor_threads, f"pykka actor threads still alive: {actor_threads}"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """``tmpfs("name", "ro", "size=1m")`` mounts a tmpfs on a new dir; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(name: str, *options: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root (chmod alone cannot deny root a write)")
        target = tmp_path / name
        target.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", ",".join(("mode=0755", *options)), "tmpfs", str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        result = subprocess.run(["umount", str(target)], capture_output=True, check=False)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(target)], check=False)


def remount(target: Path, *options: str) -> None:
    subprocess.run(
        ["mount", "-o", ",".join(("remount", *options)), str(target)],
        check=True,
        capture_output=True,
    )


def fill(directory: Path) -> None:
    """Write a file until the filesystem holding ``directory`` has no block left."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


def token_path(data: Path) -> Path:
    return data / TOKEN_FILE


# --------------------------------------------------------------------------------------------
# 1. precedence (PROTOCOL §2.1)


def test_permanent_token_env_wins_over_the_file_and_the_registration_token(
    tmp_path: Path,
) -> None:
    token_path(tmp_path).write_text(SAVED)
    info = resolve_token(str(tmp_path), Secret(PERMANENT_ENV), Secret(REGISTRATION))
    assert info == TokenInfo(
        token=Secret(PERMANENT_ENV), kind="permanent", source="PERMANENT_TOKEN"
    )


def test_the_token_file_wins_over_the_registration_token_and_is_trimmed(tmp_path: Path) -> None:
    token_path(tmp_path).write_text(f"  {SAVED} \n\n")
    info = resolve_token(str(tmp_path), None, Secret(REGISTRATION))
    assert info == TokenInfo(
        token=Secret(SAVED), kind="permanent", source=str(token_path(tmp_path))
    )


@pytest.mark.parametrize("content", [None, "", " \n\t\n"], ids=["missing", "empty", "blank"])
def test_the_registration_token_is_used_without_a_token_file(
    tmp_path: Path, content: str | None
) -> None:
    if content is not None:
        token_path(tmp_path).write_text(content)
    info = resolve_token(str(tmp_path), None, Secret(REGISTRATION))
    assert info == TokenInfo(
        token=Secret(REGISTRATION), kind="registration", source="REGISTRATION_TOKEN"
    )


def test_no_token_at_all_is_a_config_error_naming_registration_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_token(str(tmp_path), None, None)
    assert "REGISTRATION_TOKEN" in str(info.value)
    assert str(token_path(tmp_path)) in str(info.value)


@pytest.mark.parametrize(
    ("env", "with_file", "expected", "source"),
    [
        ({"PERMANENT_TOKEN": PERMANENT_ENV, "REGISTRATION_TOKEN": REGISTRATION}, True,
         PERMANENT_ENV, "PERMANENT_TOKEN"),
        ({"REGISTRATION_TOKEN": REGISTRATION}, True, SAVED, "file"),
        ({"REGISTRATION_TOKEN": REGISTRATION}, False, REGISTRATION, "REGISTRATION_TOKEN"),
    ],
)  # fmt: skip
def test_precedence_from_the_environment(
    tmp_path: Path, env: dict[str, str], with_file: bool, expected: str, source: str
) -> None:
    if with_file:
        token_path(tmp_path).write_text(SAVED + "\n")
    cfg = load_config(
        {"DOCKMON_URL": "https://dockmon.example.com", "DATA_PATH": str(tmp_path), **env},
        path_exists=lambda _: False,
    )
    info = resolve_token(cfg.data_path, cfg.permanent_token, cfg.registration_token)
    assert info.token.reveal() == expected
    assert info.source == (str(token_path(tmp_path)) if source == "file" else source)


# --------------------------------------------------------------------------------------------
# 2. write_token_atomic


def test_write_token_atomic_writes_the_raw_token_with_mode_0600(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # a permissive umask must not widen the mode
    try:
        write_token_atomic(str(tmp_path), Secret(SAVED))
    finally:
        os.umask(old_umask)

    path = token_path(tmp_path)
    assert path.read_bytes() == SAVED.encode()  # no newline, no quoting
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == [TOKEN_FILE]  # no temp file left


def test_write_token_atomic_replaces_an_existing_file_by_rename(tmp_path: Path) -> None:
    path = token_path(tmp_path)
    path.write_text("old-token\n")
    path.chmod(0o644)
    old_inode = path.stat().st_ino

    write_token_atomic(str(tmp_path), Secret(NEW))

    assert path.read_bytes() == NEW.encode()
    assert path.stat().st_ino != old_inode  # a new file renamed over it, not rewritten in place
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == [TOKEN_FILE]


# --------------------------------------------------------------------------------------------
# 3. unwritable data dir


def test_check_data_dir_accepts_a_writable_dir_and_leaves_nothing(tmp_path: Path) -> None:
    check_data_dir(str(tmp_path))
    assert os.listdir(tmp_path) == []
    missing = tmp_path / "new" / "data"
    check_data_dir(str(missing))
    assert missing.is_dir()


def test_check_data_dir_on_a_read_only_filesystem_is_fatal_naming_data_path(
    tmpfs: Mount,
) -> None:
    data = tmpfs("ro-data", "ro", "size=1m")
    with pytest.raises(FatalError, match=r"^DATA_PATH .* is not writable") as info:
        check_data_dir(str(data))
    assert str(data) in str(info.value)

    with pytest.raises(FatalError, match=r"^DATA_PATH .* cannot be created"):
        check_data_dir(str(data / "sub"))


def test_check_data_dir_rejects_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(FatalError, match=r"^DATA_PATH .* is not a directory"):
        check_data_dir(str(path))


# --------------------------------------------------------------------------------------------
# 4. full disk


def test_a_full_disk_during_a_token_write_is_fatal_and_keeps_the_previous_file(
    tmpfs: Mount,
) -> None:
    data = tmpfs("small", "size=64k")
    write_token_atomic(str(data), Secret(SAVED))
    before = token_path(data).read_bytes()
    fill(data)

    with pytest.raises(FatalError, match="cannot save the permanent token") as info:
        write_token_atomic(str(data), Secret(NEW))

    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ENOSPC
    assert NEW not in str(info.value)  # the secret is not in the message
    assert token_path(data).read_bytes() == before == SAVED.encode()
    assert sorted(os.listdir(data)) == ["filler", TOKEN_FILE]  # no temp file remains


# --------------------------------------------------------------------------------------------
# 5./6. TokenStoreActor


class Rig:
    def __init__(self, data: Path, **tokens: Secret | None) -> None:
        clock = FakeClock()
        self.supervisor = ProbeHandle()
        ctx = make_ctx(
            Peers(),
            FakeScheduler(clock),
            clock,
            child_id="token_store",
            supervisor=self.supervisor.ref,
        )
        tokens.setdefault("permanent_token", None)
        tokens.setdefault("registration_token", Secret(REGISTRATION))
        self.ref: pykka.ActorRef[Any] = TokenStoreActor.start(ctx, data_path=str(data), **tokens)

    def token(self) -> TokenInfo:
        info = self.ref.ask(GetToken(), timeout=3)
        assert isinstance(info, TokenInfo)
        return info


def test_actor_answers_the_resolved_token_and_persists_a_saved_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rig = Rig(tmp_path)
    assert rig.token() == TokenInfo(
        token=Secret(REGISTRATION), kind="registration", source="REGISTRATION_TOKEN"
    )

    rig.ref.tell(SaveToken(token=Secret(NEW)))

    assert rig.token() == TokenInfo(
        token=Secret(NEW), kind="permanent", source=str(token_path(tmp_path))
    )
    path = token_path(tmp_path)
    assert path.read_bytes() == NEW.encode()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == [TOKEN_FILE]
    assert REGISTRATION not in caplog.text and NEW not in caplog.text


def test_actor_does_not_rewrite_the_file_for_the_same_token(tmp_path: Path) -> None:
    path = token_path(tmp_path)
    write_token_atomic(str(tmp_path), Secret(SAVED))
    rig = Rig(tmp_path)
    assert rig.token().token == Secret(SAVED)
    before = path.stat()

    rig.ref.tell(SaveToken(token=Secret(SAVED)))
    rig.ref.tell(SaveToken(token=Secret(SAVED)))
    assert rig.token().token == Secret(SAVED)

    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_ctime_ns,
    )


def test_actor_crashes_fatally_when_a_save_hits_a_read_only_dir_and_keeps_the_old_file(
    tmpfs: Mount,
) -> None:
    data = tmpfs("data", "size=1m")
    rig = Rig(data)
    rig.ref.tell(SaveToken(token=Secret(SAVED)))
    assert rig.token().token == Secret(SAVED)
    remount(data, "ro")

    rig.ref.tell(SaveToken(token=Secret(NEW)))

    failed = rig.supervisor.expect(ChildFailed)
    assert (failed.child_id, failed.generation, failed.fatal) == ("token_store", 1, True)
    assert failed.error.startswith("FatalError: cannot save the permanent token")
    assert NEW not in failed.error
    assert not rig.ref.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        rig.ref.ask(GetToken(), timeout=3)
    assert token_path(data).read_bytes() == SAVED.encode()
    assert os.listdir(data) == [TOKEN_FILE]


def test_actor_fails_to_start_with_an_unwritable_data_path(tmpfs: Mount) -> None:
    data = tmpfs("ro-data", "ro", "size=1m")
    rig = Rig(data)

    with pytest.raises(pykka.ActorDeadError):
        rig.ref.ask(Ping(), timeout=3)

    # An on_start failure skips on_failure: the supervisor learns of it from the Ping only.
    rig.supervisor.ref.ask(Ping(), timeout=3)
    assert [type(m) for m in rig.supervisor.received] == [Ping]


def test_actor_fails_to_start_without_any_token(tmp_path: Path) -> None:
    rig = Rig(tmp_path, registration_token=None)
    with pytest.raises(pykka.ActorDeadError):
        rig.ref.ask(Ping(), timeout=3)
