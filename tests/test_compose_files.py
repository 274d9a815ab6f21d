"""Compose files (PROTOCOL §8.2, §8.3, §12): scan, read, confinement, and deploy refusal.

Pure functions are tested on directory trees under ``tmp_path``; the end-to-end tests run the
real agent against the strict FakeHub with ``COMPOSE_ROOTS`` pointing at such a tree (the
private dockerd is only needed for the agent to register).
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.commands import compose_files
from actors.commands.compose_files import (
    IS_A_DIRECTORY,
    IS_A_SYMLINK,
    MAX_ENV_FILES,
    MAX_FILE_SIZE,
    NOT_A_COMPOSE_FILE,
    NOT_A_REGULAR_FILE,
    NOT_ABSOLUTE,
    NOT_FOUND,
    PATH_NOT_ALLOWED,
    READ_FAILED,
    TOO_LARGE,
    Refused,
    allowed_roots,
    confine,
    env_file_refs,
    read_compose_file,
    scan_compose_dirs,
)
from actors.commands.tools import HandlerSettings
from actors.rules.paths import REFUSED_PREFIXES, is_system_path
from messages import compose
from messages.compose import MAX_SCAN_PATHS, ReadComposeFile, ScanComposeDirs
from messages.docker import CommandFailed
from messages.wire import RejectedRequest, decode_frame
from tests.support.agent_harness import RunningAgent, running_agent
from tests.support.daemon import PrivateDockerd

UTC_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
WEB = "services:\n  web:\n    image: busybox\n"


def write(path: Path, text: str = WEB) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def scan(root: Path, *requested: str, recursive: bool = True, max_depth: int = 5) -> list[str]:
    """Paths found, relative to ``root``, sorted."""
    found = scan_compose_dirs(requested, (str(root),), recursive=recursive, max_depth=max_depth)
    return sorted(os.path.relpath(f["path"], root) for f in found)


def read(path: Path | str, *roots: Path) -> dict[str, Any]:
    return read_compose_file(str(path), tuple(os.path.realpath(r) for r in roots))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the root, holding a valid compose file and a secret env file."""
    o = tmp_path / "outside"
    write(o / "compose.yaml")
    (o / "secret.env").write_text("SECRET=outside\n")
    return o


# --- system paths and roots -------------------------------------------------------------------


def test_every_refused_prefix_and_nothing_else_is_a_system_path() -> None:
    for prefix in REFUSED_PREFIXES:
        assert is_system_path(prefix)
        assert is_system_path(prefix + "/x/compose.yaml")
        assert is_system_path("/" + prefix)  # POSIX keeps a leading //; we don't
        assert is_system_path(f"/srv/../{prefix}/compose.yml")
    for fine in ("/etcetera", "/opt", "/srv/etc", "/usr/local/lib", "/", "/libx", "/runs"):
        assert not is_system_path(fine), fine


def test_compose_roots_are_exactly_the_setting_resolved(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (tmp_path / "link").symlink_to(b)
    (tmp_path / "etc-link").symlink_to("/etc")
    settings = HandlerSettings(
        stacks_dir=str(tmp_path / "stacks"),
        compose_roots=(str(a), str(tmp_path / "link"), str(b), str(tmp_path / "etc-link")),
    )
    assert allowed_roots(settings) == (str(a), str(b))  # symlink resolved, dupes and /etc out


def test_default_roots_are_the_stacks_dir_plus_existing_scan_defaults() -> None:
    existing = {"/opt", "/srv", "/data", "/home/me"}
    settings = HandlerSettings(stacks_dir="/data/stacks")
    roots = allowed_roots(settings, home="/home/me", isdir=existing.__contains__)
    assert roots == ("/data/stacks", "/opt", "/srv", "/home/me", "/data")
    everything = allowed_roots(settings, home="/root", isdir=lambda _: True)
    assert everything == (
        "/data/stacks",
        "/opt",
        "/srv",
        "/var/lib/docker-compose",
        "/var/lib/docker/volumes",
        "/root",
        "/stacks",
        "/docker",
        "/mnt",
        "/data",
        "/compose",
    )
    # a home of "/" would allow the whole disk: dropped (only an explicit root may be "/")
    assert "/" not in allowed_roots(HandlerSettings(), home="/", isdir=lambda _: True)
    assert allowed_roots(HandlerSettings(compose_roots=("/",))) == ("/",)


def test_confine_resolves_before_checking(root: Path, outside: Path) -> None:
    roots = (str(root),)
    (root / "out").symlink_to(outside)
    (root / "etc").symlink_to("/etc")
    (root / "site").mkdir()
    assert confine(str(root / "site" / ".." / "site"), roots) == str(root / "site")
    for escape in (
        f"{root}/../outside",
        f"{root}/site/../../outside/compose.yaml",
        str(root / "out"),
        str(root / "out" / "compose.yaml"),
    ):
        with pytest.raises(Refused, match="outside the agent's compose roots") as info:
            confine(escape, roots)
        assert not info.value.system
    for system in (
        "/etc",
        "/proc/self",
        str(root / "etc"),
        root.as_posix() + "/.." * 12 + "/etc/passwd",
    ):
        with pytest.raises(Refused, match=PATH_NOT_ALLOWED) as info:
            confine(system, roots)
        assert info.value.system, system
    with pytest.raises(Refused, match=NOT_ABSOLUTE):
        confine("relative/dir", roots)


# --- scan -------------------------------------------------------------------------------------


def test_scan_entry_fields(root: Path) -> None:
    named = write(root / "a" / "compose.yaml", "name: shop\nservices:\n  web: {}\n  db: {}\n")
    write(root / "b" / "docker-compose.yml")
    found = {f["path"]: f for f in scan_compose_dirs([], (str(root),), recursive=True, max_depth=5)}
    assert set(found) == {str(named), str(root / "b" / "docker-compose.yml")}
    entry = found[str(named)]
    assert set(entry) == {"path", "project_name", "services", "size", "modified"}
    assert entry["project_name"] == "shop"
    assert entry["services"] == ["web", "db"]
    assert entry["size"] == named.stat().st_size
    assert UTC_Z.match(entry["modified"])
    os.utime(named, ns=(0, 1_752_134_400_500_000_000))
    again = scan_compose_dirs([], (str(root),), recursive=True, max_depth=5)
    assert {f["modified"] for f in again if f["path"] == str(named)} == {"2025-07-10T08:00:00.5Z"}
    assert found[str(root / "b" / "docker-compose.yml")]["project_name"] == "b"


def test_scan_matches_compose_names_case_insensitively_and_needs_services(root: Path) -> None:
    for name in ("docker-compose.yml", "Docker-Compose.YAML", "COMPOSE.yml", "compose.yaml"):
        write(root / name.lower().replace(".", "-") / name)
    write(root / "other" / "compose.yaml.bak")
    write(root / "other" / "stack.yml")
    write(root / "bad" / "compose.yaml", "services: [\n")
    write(root / "empty" / "compose.yaml", "services: {}\n")
    write(root / "list" / "compose.yaml", "services:\n  - web\n")
    write(root / "none" / "compose.yaml", "version: '3'\n")
    write(root / "scalar" / "compose.yaml", "just text\n")
    assert scan(root) == [
        "compose-yaml/compose.yaml",
        "compose-yml/COMPOSE.yml",
        "docker-compose-yaml/Docker-Compose.YAML",
        "docker-compose-yml/docker-compose.yml",
    ]


def test_scan_skips_hidden_vendor_and_build_directories(root: Path) -> None:
    write(root / "keep" / "compose.yaml")
    for skipped in (".git", ".hidden", "node_modules", "vendor", "__pycache__", "venv", "dist"):
        write(root / skipped / "compose.yaml")
    for skipped in ("build", "target"):
        write(root / "keep" / skipped / "compose.yaml")
    assert scan(root) == ["keep/compose.yaml"]


def test_scan_depth_rules(root: Path) -> None:
    write(root / "compose.yaml")
    for depth in range(1, 8):
        write(root.joinpath(*[f"d{i}" for i in range(1, depth + 1)]) / "compose.yaml")

    def depths(**kwargs: Any) -> list[int]:
        return sorted(path.count("/") for path in scan(root, **kwargs))

    assert depths(recursive=False) == [0]  # top level only, whatever max_depth says
    assert depths(recursive=False, max_depth=7) == [0]
    assert depths(max_depth=1) == [0, 1]
    assert depths(max_depth=2) == [0, 1, 2]
    assert depths(max_depth=7) == list(range(8))
    assert depths(max_depth=0) == list(range(6))  # <= 0 means 5
    assert depths(max_depth=-3) == list(range(6))


def test_scan_skips_symlinks_and_oversized_files(root: Path, outside: Path) -> None:
    write(root / "real" / "compose.yaml")
    (root / "linked-dir").symlink_to(outside)  # not followed
    (root / "file").mkdir()
    (root / "file" / "compose.yaml").symlink_to(outside / "compose.yaml")  # read would refuse
    write(root / "big" / "compose.yaml", WEB + "#" * MAX_FILE_SIZE)
    assert scan(root) == ["real/compose.yaml"]


def test_scan_adds_requested_paths_confined_and_lists_each_file_once(
    root: Path, outside: Path, tmp_path: Path
) -> None:
    write(root / "apps" / "shop" / "compose.yaml")
    write(root / "top.yml")  # not a compose name
    assert scan(root, recursive=False) == []
    assert scan(root, str(root / "apps"), recursive=False) == []
    shop = str(root / "apps" / "shop")
    assert scan(root, shop, recursive=False) == ["apps/shop/compose.yaml"]
    assert scan(root, shop, str(root / "apps"), shop) == ["apps/shop/compose.yaml"]  # once
    assert scan(root, str(root / "missing"), recursive=False) == []  # absent: nothing
    (root / "out").symlink_to(outside)
    for refused in (str(outside), f"{root}/../outside", str(root / "out"), "/etc", "/proc"):
        with pytest.raises(Refused, match=PATH_NOT_ALLOWED):
            scan(root, refused)


def test_scan_found_nothing_is_an_empty_list(root: Path) -> None:
    assert scan_compose_dirs([], (str(root),), recursive=True, max_depth=5) == []
    assert scan_compose_dirs([], (), recursive=True, max_depth=5) == []


def test_scan_stops_at_its_time_budget(root: Path) -> None:
    for name in ("a", "b", "c"):
        write(root / name / "compose.yaml")
    ticks = iter(range(100))
    found = scan_compose_dirs(
        [], (str(root),), recursive=True, max_depth=5, budget_s=2.5, monotonic=lambda: next(ticks)
    )
    assert 0 < len(found) < 3


# --- read -------------------------------------------------------------------------------------


def test_read_returns_content_and_env_files(root: Path) -> None:
    compose = write(
        root / "site" / "compose.yaml",
        "services:\n"
        "  web:\n    image: x\n    env_file: web.env\n"
        "  db:\n    image: x\n    env_file:\n      - ./db.env\n      - web.env\n"
        "      - ../shared.env\n      - /abs/x.env\n      - sub/dir.env\n"
        "  cache:\n    image: x\n    env_file:\n      - path: cache.env\n        required: false\n"
        "      - path: missing.env\n"
        "  solo:\n    image: x\n    env_file:\n      path: ./solo.env\n",
    )
    (root / "site" / ".env").write_text("TAG=1.27\n")
    (root / "site" / "web.env").write_text("WEB=1\n")
    (root / "site" / "db.env").write_text("DB=1\n")
    (root / "site" / "cache.env").write_text("CACHE=1\n")
    (root / "site" / "solo.env").write_text("SOLO=1\n")
    write(root / "shared.env", "SHARED=1\n")
    write(root / "site" / "sub" / "dir.env", "SUB=1\n")
    assert read(compose, root) == {
        "success": True,
        "path": str(compose),
        "content": compose.read_text(),
        "env_content": "TAG=1.27\n",
        "env_files": {
            ".env": "TAG=1.27\n",
            "web.env": "WEB=1\n",
            "db.env": "DB=1\n",
            "cache.env": "CACHE=1\n",
            "missing.env": "",
            "solo.env": "SOLO=1\n",
        },
        "skipped_env_files": ["../shared.env", "/abs/x.env", "sub/dir.env"],
    }


def test_env_file_refs_every_form() -> None:
    compose = {
        "services": {
            "a": {"env_file": "a.env"},
            "b": {"env_file": ["b.env", {"path": "c.env"}, "a.env", 3, {"nope": 1}]},
            "c": {"env_file": {"path": "./d.env"}},
            "d": {"env_file": None},
            "e": "not a mapping",
        }
    }
    assert env_file_refs(compose) == ["a.env", "b.env", "c.env", "./d.env"]
    assert env_file_refs(None) == []
    assert env_file_refs({"services": ["x"]}) == []


def test_read_env_file_guards(root: Path, outside: Path) -> None:
    compose = write(
        root / "site" / "compose.yaml",
        "services:\n  web:\n    env_file: [link.env, big.env, dir.env, ok.env]\n",
    )
    (root / "site" / "link.env").symlink_to(outside / "secret.env")
    (root / "site" / "big.env").write_text("X" * (MAX_FILE_SIZE + 1))
    (root / "site" / "dir.env").mkdir()
    (root / "site" / "ok.env").write_text("X" * MAX_FILE_SIZE)  # exactly 1 MiB is fine
    (root / "site" / ".env").symlink_to(outside / "secret.env")
    result = read(compose, root)
    assert result["success"] is True
    assert result["env_files"] == {"ok.env": "X" * MAX_FILE_SIZE}
    assert "env_content" not in result  # .env is a symlink: not read
    assert result["skipped_env_files"] == ["link.env", "big.env", "dir.env"]
    assert "outside" not in json.dumps(result)

    (root / "site" / ".env").unlink()
    (root / "site" / ".env").write_text("Y" * (MAX_FILE_SIZE + 1))
    assert ".env" not in read(compose, root)["env_files"]


def test_read_unparsable_compose_still_returns_content_and_dot_env(root: Path) -> None:
    compose = write(root / "compose.yml", "services: [\n")
    (root / ".env").write_text("A=1\n")
    result = read(compose, root)
    assert result["success"] is True and result["content"] == "services: [\n"
    assert result["env_files"] == {".env": "A=1\n"} and result["skipped_env_files"] == []


def test_read_guards_with_their_exact_texts(root: Path, outside: Path) -> None:
    compose = write(root / "site" / "compose.yaml")
    (root / "site" / "docker-compose.yml").symlink_to(compose)
    (root / "dir" / "compose.yml").mkdir(parents=True)
    write(root / "big" / "compose.yaml", "#" * (MAX_FILE_SIZE + 1))
    write(root / "exact" / "compose.yaml", "#" * MAX_FILE_SIZE)
    (root / "fifo").mkdir()
    os.mkfifo(root / "fifo" / "compose.yaml")
    write(root / "site" / "notes.txt")

    def error(path: Path | str) -> str:
        result = read(path, root)
        assert set(result) == {"success", "path", "error"}
        assert result["success"] is False and result["path"] == str(path)
        return str(result["error"])

    assert error("/etc/compose.yaml") == PATH_NOT_ALLOWED
    assert error("/etc/passwd") == PATH_NOT_ALLOWED
    assert error("/proc/self/root/compose.yaml") == PATH_NOT_ALLOWED
    assert error(root / "site" / "notes.txt") == NOT_A_COMPOSE_FILE
    assert error(root / "site" / "docker-compose.yml") == IS_A_SYMLINK
    assert error(root / "dir" / "compose.yml") == IS_A_DIRECTORY
    assert error(root / "big" / "compose.yaml") == TOO_LARGE
    assert error(root / "nowhere" / "compose.yaml") == NOT_FOUND
    assert error(root / "fifo" / "compose.yaml") == NOT_A_REGULAR_FILE  # never blocks
    assert error("site/compose.yaml") == NOT_ABSOLUTE
    assert read(root / "exact" / "compose.yaml", root)["success"] is True
    assert TOO_LARGE == "File too large (max 1MB)"
    assert IS_A_SYMLINK == "Compose file is a symlink"


def test_read_failure_is_reported(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compose = write(root / "compose.yaml")
    real_open = os.open

    def denied(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path) == str(compose):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    assert read(compose, root)["error"] == READ_FAILED


def test_read_refuses_a_path_swapped_between_check_and_open(
    root: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks lstat the path; the open must not follow a symlink swapped in afterwards."""
    write(root / "site" / "compose.yaml")
    (root / "swapped").mkdir()
    (root / "swapped" / "compose.yaml").symlink_to(outside / "compose.yaml")
    regular = os.lstat(root / "site" / "compose.yaml")
    real_lstat = os.lstat
    monkeypatch.setattr(
        os, "lstat", lambda p, *a, **k: regular if "swapped" in str(p) else real_lstat(p, *a, **k)
    )
    assert read(root / "swapped" / "compose.yaml", root)["error"] == IS_A_SYMLINK
    monkeypatch.undo()
    # a parent directory swapped for a symlink: the opened file's real path is checked too
    monkeypatch.setattr(compose_files, "_fd_path", lambda fd: str(outside / "compose.yaml"))
    assert read(root / "site" / "compose.yaml", root)["error"] == PATH_NOT_ALLOWED
    monkeypatch.setattr(compose_files, "_fd_path", lambda fd: "/etc/compose.yaml")
    assert read(root / "site" / "compose.yaml", root)["error"] == PATH_NOT_ALLOWED


def test_read_is_confined_after_resolving(root: Path, outside: Path) -> None:
    (root / "out").symlink_to(outside)
    (root / "etc").symlink_to("/etc")
    write(root / "site" / "compose.yaml")
    for escape in (
        outside / "compose.yaml",
        f"{root}/site/../../outside/compose.yaml",
        root / "out" / "compose.yaml",
    ):
        result = read(escape, root)
        assert result["success"] is False
        assert result["error"].startswith(f"{PATH_NOT_ALLOWED}: {escape} is outside")
        assert str(root) in result["error"] and "COMPOSE_ROOTS" in result["error"]
    assert read(root / "etc" / "compose.yaml", root)["error"] == PATH_NOT_ALLOWED
    # `..` is resolved physically: out/.. is the parent of `outside`, not the root
    tricky = f"{root}/out/../site/compose.yaml"
    assert read(tricky, root)["error"].startswith(f"{PATH_NOT_ALLOWED}: {tricky} is outside")
    # a path with `..` that stays inside the roots is fine, and echoed as asked
    inside = f"{root}/site/../site/compose.yaml"
    result = read(inside, root)
    assert result["success"] is True and result["path"] == inside


# --- decoding ---------------------------------------------------------------------------------


def command(name: str, payload: Any = None, *, omit: bool = False) -> str:
    frame: dict[str, Any] = {"type": "command", "command": name, "id": "r1", "correlation_id": "r1"}
    if not omit:
        frame["payload"] = payload
    return json.dumps(frame)


def test_decoders() -> None:
    assert decode_frame(command("scan_compose_dirs", omit=True)) == ScanComposeDirs(
        request_id="r1", paths=(), recursive=False, max_depth=5
    )
    decoded = decode_frame(
        command("scan_compose_dirs", {"paths": ["/a", "/b", "/a", ""], "recursive": True})
    )
    assert decoded == ScanComposeDirs(request_id="r1", paths=("/a", "/b"), recursive=True)
    for depth, expected in ((0, 5), (-1, 5), (3, 3), (2.0, 2), (None, 5)):
        frame = command("scan_compose_dirs", {"max_depth": depth})
        assert decode_frame(frame) == ScanComposeDirs(request_id="r1", max_depth=expected)
    assert decode_frame(command("read_compose_file", {"path": "/opt/x/compose.yaml"})) == (
        ReadComposeFile(request_id="r1", path="/opt/x/compose.yaml")
    )
    bad: list[tuple[str, Any, str]] = [
        ("scan_compose_dirs", "x", "payload must be an object"),
        ("scan_compose_dirs", {"paths": "/opt"}, "paths must be a list"),
        ("scan_compose_dirs", {"paths": ["/opt", 3]}, "paths must contain only strings"),
        ("scan_compose_dirs", {"max_depth": "5"}, "max_depth must be a number"),
        ("scan_compose_dirs", {"max_depth": True}, "max_depth must be a number"),
        ("scan_compose_dirs", {"max_depth": 1.5}, "max_depth must be a whole number"),
        ("scan_compose_dirs", {"recursive": "yes"}, "recursive must be a boolean"),
        ("read_compose_file", {}, "path is required"),
        ("read_compose_file", {"path": "  "}, "path is required"),
        ("read_compose_file", {"path": 7}, "path must be a string"),
    ]
    for name, payload, problem in bad:
        rejected = decode_frame(command(name, payload))
        assert isinstance(rejected, RejectedRequest), (name, payload)
        assert isinstance(rejected.reply, CommandFailed)
        assert rejected.reply.error.startswith(f"invalid payload for {name}: ")
        assert problem in rejected.reply.error


# --- bounded work per request -----------------------------------------------------------------


class Counted(str):
    """A str that counts how often it is compared for equality (a linear pass compares O(n))."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        Counted.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def _comparisons_of(work: Any) -> int:
    Counted.comparisons = 0
    work()
    return Counted.comparisons


def test_scan_paths_are_capped_and_deduplicated_in_linear_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    too_many = decode_frame(command("scan_compose_dirs", {"paths": ["/opt/x"] * 100_000}))
    assert isinstance(too_many, RejectedRequest) and isinstance(too_many.reply, CommandFailed)
    assert too_many.reply.error == (
        "invalid payload for scan_compose_dirs: 100000 paths given, at most 256 allowed"
    )
    paths = [Counted(f"/opt/app{n % 200}") for n in range(MAX_SCAN_PATHS)]
    decoded: list[Any] = []
    count = _comparisons_of(
        lambda: decoded.append(compose._scan_compose_dirs("r1", {"paths": paths}))
    )
    assert decoded[0].paths == tuple(f"/opt/app{n}" for n in range(200))
    assert count <= 2 * MAX_SCAN_PATHS, count
    # the handler's own de-duplication of the resolved paths
    monkeypatch.setattr(compose_files, "confine", lambda path, roots: Counted(path))
    resolved: list[list[str]] = []
    count = _comparisons_of(lambda: resolved.append(compose_files.scan_paths(paths, ("/opt",))))
    assert resolved[0] == ["/opt", *(f"/opt/app{n}" for n in range(200))]
    assert count <= 2 * MAX_SCAN_PATHS, count


def test_env_file_references_are_collected_in_linear_work() -> None:
    refs = [Counted(f"e{n % 3000}.env") for n in range(6000)]
    doc = {"services": {f"s{n}": {"env_file": refs[n * 10 : n * 10 + 10]} for n in range(600)}}
    found: list[list[str]] = []
    count = _comparisons_of(lambda: found.append(env_file_refs(doc)))
    assert found[0] == [f"e{n}.env" for n in range(3000)]
    assert count <= 2 * len(refs), count


def test_read_reads_at_most_max_env_files(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    names = [f"e{n}.env" for n in range(MAX_ENV_FILES + 10)]
    for name in names:
        (root / name).write_text("A=1\n")
    refs = "".join(f"      - {name}\n" for name in names)
    compose_file = write(root / "compose.yaml", f"services:\n  web:\n    env_file:\n{refs}")
    result = read(compose_file, root)
    assert result["success"] is True
    assert list(result["env_files"]) == names[:MAX_ENV_FILES]
    assert result["skipped_env_files"] == names[MAX_ENV_FILES:]
    assert f"more than {MAX_ENV_FILES} env files; 10 skipped" in caplog.text


def test_scan_reports_at_most_max_scan_results(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(compose_files, "MAX_SCAN_RESULTS", 3)
    for n in range(5):
        write(root / f"app{n}" / "compose.yaml")
    assert len(scan(root)) == 3
    assert "compose scan stopped at 3 compose files" in caplog.text


# --- end to end -------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """stacks/site (compose + env files), stacks/deep/... and a symlink out of the root."""
    top = tmp_path / "tree"
    stacks = top / "stacks"
    write(
        stacks / "site" / "compose.yaml",
        "name: site\nservices:\n  web:\n    image: busybox\n    env_file: [db.env, ../x.env]\n"
        "  db:\n    image: busybox\n",
    )
    (stacks / "site" / ".env").write_text("TAG=1.27\n")
    (stacks / "site" / "db.env").write_text("POSTGRES_PASSWORD=x\n")
    write(stacks / "a" / "b" / "docker-compose.yml")
    write(top / "outside" / "compose.yaml")
    (stacks / "escape").symlink_to(top / "outside")
    return top


@pytest.fixture
def agent(tmp_path: Path, tree: Path, dockerd: PrivateDockerd) -> Iterator[RunningAgent]:
    roots = f"{tree / 'stacks'}, {tree / 'extra'}"
    with running_agent(tmp_path / "data", dockerd.base_url, COMPOSE_ROOTS=roots) as running:
        running.hub.wait_registered()
        yield running
        running.hub.assert_clean()


def test_e2e_scan(agent: RunningAgent, tree: Path) -> None:
    hub, stacks = agent.hub, tree / "stacks"
    result = hub.command("scan_compose_dirs", {"paths": None, "recursive": True, "max_depth": 5})
    assert result.ok and set(result.data) == {"success", "compose_files"}
    files = {f["path"]: f for f in result.data["compose_files"]}
    assert set(files) == {
        str(stacks / "site" / "compose.yaml"),
        str(stacks / "a/b/docker-compose.yml"),
    }
    site = files[str(stacks / "site" / "compose.yaml")]
    assert site["project_name"] == "site" and site["services"] == ["web", "db"]
    assert UTC_Z.match(site["modified"]) and isinstance(site["size"], int)
    assert files[str(stacks / "a/b/docker-compose.yml")]["project_name"] == "b"

    shallow = hub.command("scan_compose_dirs", {"paths": [], "recursive": True, "max_depth": 1})
    assert [f["path"] for f in shallow.data["compose_files"]] == [str(stacks / "site/compose.yaml")]
    flat = hub.command("scan_compose_dirs", {"paths": [str(stacks / "site")], "recursive": False})
    assert [f["path"] for f in flat.data["compose_files"]] == [str(stacks / "site/compose.yaml")]

    (tree / "extra").mkdir()
    empty = hub.command("scan_compose_dirs", {"paths": [str(tree / "extra")], "recursive": True})
    assert empty.ok and len(empty.data["compose_files"]) == 2  # the roots are always scanned

    for refused in (str(tree / "outside"), str(stacks / "escape"), f"{stacks}/../outside"):
        denied = hub.command("scan_compose_dirs", {"paths": [refused], "recursive": True})
        assert not denied.ok and denied.error_type == "permission_denied"
        assert denied.error == (
            f"{PATH_NOT_ALLOWED}: {refused} is outside the agent's compose roots "
            f"({stacks}, {tree / 'extra'}); set COMPOSE_ROOTS on the agent to change them"
        )
    for system in ("/etc", "/proc"):
        denied = hub.command("scan_compose_dirs", {"paths": [system], "recursive": True})
        assert denied.error == f"{PATH_NOT_ALLOWED}: {system} is a system directory"
    bad = hub.command("scan_compose_dirs", {"paths": "/opt"})
    assert (
        bad.error == "invalid payload for scan_compose_dirs: paths must be a list of strings "
        "or null, got str"
    )


def test_e2e_read(agent: RunningAgent, tree: Path) -> None:
    hub, site = agent.hub, tree / "stacks" / "site"
    result = hub.command("read_compose_file", {"path": str(site / "compose.yaml")})
    assert result.ok
    assert result.data == {
        "success": True,
        "path": str(site / "compose.yaml"),
        "content": (site / "compose.yaml").read_text(),
        "env_content": "TAG=1.27\n",
        "env_files": {".env": "TAG=1.27\n", "db.env": "POSTGRES_PASSWORD=x\n"},
        "skipped_env_files": ["../x.env"],
    }
    refusals = {
        "/etc/compose.yaml": PATH_NOT_ALLOWED,
        "/proc/1/root/etc/compose.yml": PATH_NOT_ALLOWED,
        str(site / ".env"): NOT_A_COMPOSE_FILE,
        str(site / "gone" / "compose.yaml"): NOT_FOUND,
    }
    escapes = (f"{site}/../../outside/compose.yaml", str(tree / "stacks/escape/compose.yaml"))
    for path in [*refusals, *escapes]:
        reply = hub.command("read_compose_file", {"path": path})
        # a guard is a *result* with success false (PROTOCOL §8.3), not an error envelope
        assert reply.ok and reply.raw.get("error") is None
        assert set(reply.data) == {"success", "path", "error"}
        assert reply.data["success"] is False and reply.data["path"] == path
        if path in refusals:
            assert reply.data["error"] == refusals[path]
        else:
            assert reply.data["error"].startswith(f"{PATH_NOT_ALLOWED}: {path} is outside")
    missing = hub.command("read_compose_file", {})
    assert missing.error == "invalid payload for read_compose_file: path is required"
