"""One atomic-write rule for every file the agent keeps in DATA_PATH (actors/runtime/fsio.py).

Each writer (token, status, update journal, self-update hand-over file) is driven through the
real filesystem while the system calls are recorded, and must follow the same rule: temp file
in the same directory, mode set before the rename, content fsync'd before the rename, the
directory fsync'd after it. A source scan proves no module hand-rolls its own writer again.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.flows import self_update
from actors.flows.container_update import Journal, JournalWriteFailed
from actors.flows.context import CLEANUP_FILE
from actors.rules.policy import AuditLog
from actors.runtime import fsio
from actors.status import StatusReporterActor
from actors.token_store import TOKEN_FILE, write_token_atomic
from messages.common import Secret
from tests.support.fakes import FakeClock, FakeScheduler, make_ctx
from tests.support.hostenv import REPO_ROOT
from tests.support.prerequisites import require
from tests.support.sources import lines_matching


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


class Recorder:
    """Records fchmod/fsync/replace calls (with the file they hit) while passing them on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str, int]] = []  # (call, path, mode seen at that moment)
        real_fchmod, real_fsync, real_replace = os.fchmod, os.fsync, os.replace

        def fchmod(fd: int, mode: int) -> None:
            real_fchmod(fd, mode)
            self.calls.append(("fchmod", _fd_path(fd), mode))

        def fsync(fd: int) -> None:
            real_fsync(fd)
            self.calls.append(("fsync", _fd_path(fd), 0))

        def replace(src: Any, dst: Any) -> None:
            mode = stat.S_IMODE(os.stat(src).st_mode)
            self.calls.append(("replace", str(src), mode))
            real_replace(src, dst)

        monkeypatch.setattr(os, "fchmod", fchmod)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def check_rule(self, target: Path, mode: int) -> None:
        replaces = [c for c in self.calls if c[0] == "replace"]
        assert len(replaces) == 1, self.calls
        at = self.calls.index(replaces[0])
        tmp = replaces[0][1]
        assert Path(tmp).parent == target.parent, "the temp file must be in the same directory"
        assert replaces[0][2] == mode, f"mode at rename {oct(replaces[0][2])}, want {oct(mode)}"
        before, after = self.calls[:at], self.calls[at + 1 :]
        assert ("fsync", tmp, 0) in before, f"content not fsync'd before the rename: {self.calls}"
        assert any(c[0] == "fchmod" and c[1] == tmp for c in before), self.calls
        assert ("fsync", str(target.parent), 0) in after, f"directory not fsync'd: {self.calls}"


def _write_token(target: Path) -> None:
    write_token_atomic(str(target.parent), Secret("perm-token-0123456789"))


def _write_status(target: Path) -> None:
    clock = FakeClock()
    actor = StatusReporterActor(
        make_ctx(None, FakeScheduler(clock), clock),  # type: ignore[arg-type]
        data_path=str(target.parent),
        version="test",
    )
    actor._write()


def _write_journal(target: Path) -> None:
    journal = Journal.acquire(target.parent, target.stem)
    assert journal is not None
    try:
        journal.save(phase="pulling")
    finally:
        journal.release()


def _write_handover(target: Path) -> None:
    self_update._write_private_json(target, {"old_container_id": "3f9a1b2c4d5e"})


WRITERS: dict[str, tuple[Callable[[Path], None], str, int]] = {
    "token": (_write_token, TOKEN_FILE, 0o600),
    "status": (_write_status, "status.json", 0o644),
    "journal": (_write_journal, "3f9a1b2c4d5e.json", 0o600),
    "self-update hand-over": (_write_handover, CLEANUP_FILE, 0o600),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_writer_follows_the_one_durability_rule(
    writer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write, name, mode = WRITERS[writer]
    target = tmp_path / name
    target.write_text("old")
    target.chmod(0o666)
    recorder = Recorder(monkeypatch)
    old_umask = os.umask(0)  # a permissive umask must not widen the mode
    try:
        write(target)
    finally:
        os.umask(old_umask)
    recorder.check_rule(target, mode)
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert target.read_text() != "old"
    assert not [p for p in os.listdir(tmp_path) if fsio.is_temp_name(p)]


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_writer_replaces_a_symlink_instead_of_following_it(
    writer: str, tmp_path: Path
) -> None:
    write, name, _ = WRITERS[writer]
    victim = tmp_path / "elsewhere"
    victim.write_text("not yours")
    (tmp_path / name).symlink_to(victim)
    write(tmp_path / name)
    assert victim.read_text() == "not yours"
    assert not (tmp_path / name).is_symlink()


def test_short_writes_are_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    fsio.write_atomic(tmp_path / "f", b"0123456789" * 10)
    assert (tmp_path / "f").read_bytes() == b"0123456789" * 10


@pytest.fixture
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "full"
    target.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(target)])
    require(mounted.returncode == 0, "cannot mount a tmpfs here")
    try:
        yield target
    finally:
        if subprocess.run(["umount", str(target)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(target)], check=False)  # a file is still open


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(full_tmpfs: Path) -> None:
    target = full_tmpfs / "state.json"
    fsio.write_json_atomic(target, {"v": 1})
    fd = os.open(full_tmpfs / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        fsio.write_json_atomic(target, {"v": 2, "pad": "x" * 8192})
    assert info.value.errno == errno.ENOSPC
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(os.listdir(full_tmpfs)) == ["filler", "state.json"]


def _fill(directory: Path) -> None:
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


def test_the_audit_log_fails_soft_on_a_full_disk_and_recovers(
    full_tmpfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="actors.rules.policy")
    audit = AuditLog(full_tmpfs / "audit.log", who="dockmon@test")
    assert audit.record("t0", "list_containers", None, "ok") is None
    _fill(full_tmpfs)
    results = [audit.record(f"t{n}", "inspect", "c1", "ok") for n in range(200)]
    written = results.index(next(r for r in results if r is not None))  # its last page is full
    assert written < 100 and all(r and "No space left on device" in r for r in results[written:])
    audit.close()  # neither the writes nor the close of the broken file raised
    lost = 200 - written
    assert audit.failures == lost
    assert caplog.text.count("cannot write the audit log") == 1
    (full_tmpfs / "filler").unlink()
    assert audit.record("t999", "list_containers", None, "ok") is None
    assert f"is written again ({lost} line(s) were lost)" in caplog.text
    audit.close()
    lines = (full_tmpfs / "audit.log").read_text().splitlines()
    times = [json.loads(line)["time"] for line in lines]  # never half a line, even at ENOSPC
    assert times == ["t0", *(f"t{n}" for n in range(written)), "t999"]


def test_a_journal_that_cannot_be_written_keeps_its_state(full_tmpfs: Path) -> None:
    journal = Journal.acquire(full_tmpfs / "updates", "3f9a1b2c4d5e")
    assert journal is not None
    try:
        journal.save(phase="backup", old_id="a" * 64)
        _fill(full_tmpfs)
        with pytest.raises(JournalWriteFailed, match="cannot write the update journal") as info:
            journal.save(phase="creating", padding="x" * 8192)
        assert info.value.touched  # the old container was already stopped in phase "backup"
        assert journal.state == {"phase": "backup", "old_id": "a" * 64}  # what is on disk
        assert json.loads(journal.path.read_text()) == journal.state
    finally:
        journal.release()


def test_create_exclusive_writes_once(tmp_path: Path) -> None:
    assert fsio.create_exclusive(tmp_path / "claim", b"first")
    assert not fsio.create_exclusive(tmp_path / "claim", b"second")
    assert (tmp_path / "claim").read_bytes() == b"first"
    assert stat.S_IMODE((tmp_path / "claim").stat().st_mode) == 0o600


#: what a hand-rolled durable writer looks like
_HAND_ROLLED = re.compile(r"\bos\.(replace|rename|fsync)\(|\bmkstemp\(|\.replace\(tmp")


def test_no_module_but_fsio_writes_files_durably_by_hand() -> None:
    offenders = lines_matching(_HAND_ROLLED, allowed=REPO_ROOT / "actors" / "runtime" / "fsio.py")
    assert not offenders, "use actors.runtime.fsio instead:\n" + "\n".join(offenders)
