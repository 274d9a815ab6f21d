"""TokenStore: token precedence, the atomic 0600 write, and real filesystem failures.

Read-only and full filesystems are real tmpfs mounts (we run as root, so chmod would not stop a
write); when mounting is not possible those tests skip with a reason, or fail in CI.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
import sys
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
    TokenFileError,
    TokenStoreActor,
    check_data_dir,
    resolve_token,
    write_token_atomic,
)
from agent_config import load_config
from messages.common import Ping, Secret
from messages.supervision import ChildFailed
from messages.tokens import GetToken, SaveToken, TokenInfo
from tests.support.fakes import FakeClock, FakeScheduler, ProbeHandle, make_ctx
from tests.support.hostenv import REPO_ROOT
from tests.support.prerequisites import require

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
        require(
            os.geteuid() == 0, "mounting a tmpfs needs root (chmod alone cannot deny root a write)"
        )
        target = tmp_path / name
        target.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", ",".join(("mode=0755", *options)), "tmpfs", str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        require(
            result.returncode == 0,
            f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}",
        )
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


# --------------------------------------------------------------------------------------------
# 6. the token file is read safely: a clear error or a repaired file, never a hang


def _resolve_within(data: Path, seconds: float = 5) -> TokenInfo | BaseException:
    """resolve_token on a thread: a reader that blocks (a FIFO) must not hang the test."""
    result: list[TokenInfo | BaseException] = []

    def run() -> None:
        try:
            result.append(resolve_token(str(data), None, Secret(REGISTRATION)))
        except BaseException as exc:
            result.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert result, f"reading the token file hung for more than {seconds}s"
    return result[0]


def _refused(data: Path, *needles: str) -> str:
    outcome = _resolve_within(data)
    assert isinstance(outcome, TokenFileError), outcome
    text = str(outcome)
    assert str(token_path(data)) in text and "delete" in text, text
    for needle in needles:
        assert needle in text, text
    return text


def test_a_symlinked_token_file_is_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere"
    secret.write_text("someone-elses-secret-value")
    token_path(tmp_path).symlink_to(secret)
    text = _refused(tmp_path, "symbolic link", "never follows it")
    assert "someone-elses-secret-value" not in text


def test_a_fifo_token_file_is_refused_at_once(tmp_path: Path) -> None:
    os.mkfifo(token_path(tmp_path), 0o600)
    _refused(tmp_path, "FIFO")


def test_a_device_token_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "creating a device node needs root")
    os.mknod(token_path(tmp_path), stat.S_IFCHR | 0o600, os.makedev(1, 5))  # like /dev/zero
    _refused(tmp_path, "character device")


def test_a_directory_at_the_token_path_is_refused(tmp_path: Path) -> None:
    token_path(tmp_path).mkdir()
    _refused(tmp_path, "a directory")


def test_an_oversized_token_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    with open(token_path(tmp_path), "wb") as f:
        f.truncate(100 * 1024 * 1024)  # 100 MB, sparse
    _refused(tmp_path, "104857600 bytes")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"perm-token-part1\nperm-token-part2\n", "a line break inside the token"),
        (b'"perm-file-4e559a612f0c"', "only letters"),
        (b"perm token", "only letters"),
        (b"a" * 256, "at most 255"),
        (b"\xff\xfeperm", "only letters"),
    ],
    ids=["newline", "quotes", "space", "too-long", "not-utf8"],
)
def test_a_token_file_with_invalid_characters_is_refused(
    tmp_path: Path, content: bytes, needle: str
) -> None:
    token_path(tmp_path).write_bytes(content)
    token_path(tmp_path).chmod(0o600)
    text = _refused(tmp_path, needle)
    assert content.decode("utf-8", "replace") not in text  # never the content itself


def test_a_token_file_readable_by_others_is_repaired_to_0600(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_path(tmp_path).write_text(f"{SAVED}\n")
    token_path(tmp_path).chmod(0o644)
    outcome = _resolve_within(tmp_path)
    assert outcome == TokenInfo(
        token=Secret(SAVED), kind="permanent", source=str(token_path(tmp_path))
    )
    assert stat.S_IMODE(token_path(tmp_path).stat().st_mode) == 0o600
    assert "had mode 0644 (readable by others); set it to 0600" in caplog.text


def test_the_agent_stops_with_the_error_instead_of_hanging_on_a_fifo(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.mkfifo(token_path(data), 0o600)
    proc = subprocess.run(
        [sys.executable, "-m", "agent_cli"],
        cwd=REPO_ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "DOCKMON_URL": "http://127.0.0.1:9",
            "REGISTRATION_TOKEN": REGISTRATION,
            "DATA_PATH": str(data),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert f"{token_path(data)} is a FIFO (named pipe)" in proc.stderr


def test_saving_replaces_an_unusable_token_file(tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere"
    secret.write_text("do-not-touch")
    token_path(tmp_path).symlink_to(secret)
    ref = TokenStoreActor.start(
        make_ctx(Peers(), FakeScheduler(FakeClock()), FakeClock(), child_id="token_store"),
        data_path=str(tmp_path),
        permanent_token=Secret(PERMANENT_ENV),
        registration_token=None,
    )
    try:
        ref.ask(SaveToken(token=Secret(NEW)), timeout=5)
    finally:
        ref.stop()
    assert secret.read_text() == "do-not-touch"
    assert not token_path(tmp_path).is_symlink()
    assert token_path(tmp_path).read_bytes() == NEW.encode()
