"""Stack files (actors/deploy/files.py): names, modes, symlinks, stale .env (PROTOCOL §8.1, §12)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from actors.deploy.files import (
    OVERRIDE_FILE,
    StackFileError,
    env_file_name,
    project_name_problem,
    remove_stack_dir,
    write_override,
    write_stack,
)

COMPOSE = "services:\n  web:\n    image: busybox\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_project_names() -> None:
    for good in ("site", "my-site_2", "0app"):
        assert project_name_problem(good) is None
    refused = {
        "": "must not be empty",
        "  ": "must not be empty",
        "a/b": "must not contain",
        "a\\b": "must not contain",
        "a\x00b": "must not contain",
        ".": "must not be '.' or '..'",
        "..": "must not be '.' or '..'",
        ".hidden": "start with '.'",
        "My Site": "must consist only of lowercase alphanumeric characters",
        "-x": "must consist only of lowercase alphanumeric characters",
    }
    for name, text in refused.items():
        problem = project_name_problem(name)
        assert problem is not None and text in problem, (name, problem)


def test_env_file_names() -> None:
    assert env_file_name(".env") == ".env"
    assert env_file_name("./db.env") == "db.env"
    for bad in ("", "../x.env", "a/b.env", "/etc/passwd", ".", "..", "x\\y", "./", "n\x00"):
        with pytest.raises(StackFileError, match="bare file name"):
            env_file_name(bad)
    for reserved in ("docker-compose.yml", "./docker-compose.yml", OVERRIDE_FILE):
        with pytest.raises(StackFileError, match="would replace"):
            env_file_name(reserved)


def test_write_compose_and_env(tmp_path: Path) -> None:
    stacks = tmp_path / "stacks"
    os.umask(0o077)  # the modes must not depend on the umask
    try:
        written = write_stack(str(stacks), "site", COMPOSE, "TAG=1.27\n", ())
    finally:
        os.umask(0o022)
    site = stacks / "site"
    assert written.directory == str(site) and written.env_files == (".env",)
    assert (site / "docker-compose.yml").read_text() == COMPOSE
    assert (site / ".env").read_text() == "TAG=1.27\n"
    assert (mode(site), mode(site / "docker-compose.yml"), mode(site / ".env")) == (
        0o755,
        0o644,
        0o600,
    )
    # an empty env_file_content deletes a stale .env
    write_stack(str(stacks), "site", COMPOSE, "", ())
    assert not (site / ".env").exists()


def test_env_files_set(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / ".env").write_text("OLD=1\n")
    (site / "keep.txt").write_text("mine")
    (site / "db.env").write_text("OLD\n")
    os.chmod(site / "db.env", 0o644)
    written = write_stack(
        str(tmp_path), "site", COMPOSE, "ignored", ((".env", "A=1\n"), ("./db.env", "PW=x\n"))
    )
    assert written.env_files == (".env", "db.env")
    assert (site / ".env").read_text() == "A=1\n" and (site / "db.env").read_text() == "PW=x\n"
    assert mode(site / "db.env") == 0o600  # an existing file gets the mode too
    assert (site / "keep.txt").read_text() == "mine"  # other files are left alone
    # a set without .env removes the stale one (it would still be used for interpolation)
    write_stack(str(tmp_path), "site", COMPOSE, "", (("db.env", "PW=y\n"),))
    assert not (site / ".env").exists() and (site / "db.env").read_text() == "PW=y\n"


def test_names_are_validated_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(StackFileError):
        write_stack(str(tmp_path), "site", COMPOSE, "", (("a.env", "A=1"), ("../b.env", "B=2")))
    assert not (tmp_path / "site").exists()
    with pytest.raises(StackFileError, match="invalid project name"):
        write_stack(str(tmp_path), "../escape", COMPOSE, "", ())
    assert list(tmp_path.iterdir()) == []


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "target"
    target.write_text("precious")
    stacks = tmp_path / "stacks"
    site = stacks / "site"
    site.mkdir(parents=True)
    for name in ("docker-compose.yml", ".env", "db.env"):
        link = site / name
        link.symlink_to(target)
        kwargs = {
            "docker-compose.yml": ("", ()),
            ".env": ("A=1", ()),
            "db.env": ("", (("db.env", "x"),)),
        }
        content, env_files = kwargs[name]
        with pytest.raises(StackFileError, match="symlink"):
            write_stack(str(stacks), "site", COMPOSE, content, env_files)
        assert target.read_text() == "precious"
        link.unlink()
        if name == "docker-compose.yml":
            (site / name).write_text(COMPOSE)
    # a stale .env that is a symlink is removed itself, its target is untouched
    (site / ".env").symlink_to(target)
    write_stack(str(stacks), "site", COMPOSE, "", ())
    assert not (site / ".env").is_symlink() and target.read_text() == "precious"
    # a symlinked stack directory is not written through
    (stacks / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StackFileError, match="symlink"):
        write_stack(str(stacks), "linked", COMPOSE, "", ())
    assert sorted(p.name for p in outside.iterdir()) == ["target"]


def test_override_and_stack_dir_removal(tmp_path: Path) -> None:
    write_stack(str(tmp_path), "site", COMPOSE, "A=1\n", ())
    path = write_override(str(tmp_path / "site"), "services: {}\n")
    assert Path(path).name == OVERRIDE_FILE and mode(Path(path)) == 0o644
    write_stack(str(tmp_path), "site", COMPOSE, "A=1\n", ())  # a new deploy drops a stale one
    assert not Path(path).exists()
    (tmp_path / "site" / "data").mkdir()
    assert remove_stack_dir(str(tmp_path), "site") is None
    assert not (tmp_path / "site").exists()
    assert remove_stack_dir(str(tmp_path), "gone") is None
    real = tmp_path / "real"
    real.mkdir()
    (real / "file").write_text("x")
    (tmp_path / "linked").symlink_to(real, target_is_directory=True)
    assert "symlink" in (remove_stack_dir(str(tmp_path), "linked") or "")
    assert (real / "file").exists() and (tmp_path / "linked").is_symlink()
