"""Durable file writes in ``$DATA_PATH``: the one atomic-write rule every actor uses.

:func:`write_atomic` replaces a file so that a reader, a crash or a power cut sees either the
old content or the new, never a mix, and never a file with the wrong mode:

1. a temporary file in the same directory (so the rename cannot cross filesystems), created
   exclusively (``O_EXCL``: never through a symlink or into someone else's file);
2. its mode set with ``fchmod`` (before anyone can see it under the real name);
3. the whole content written (short writes continued), flushed and ``fsync``'d;
4. renamed over the target (``rename(2)`` is atomic; a symlink at the target is replaced, never
   followed);
5. the directory ``fsync``'d, so the rename itself survives a crash.

On any failure the temporary file is removed, the target is untouched and the ``OSError``
propagates: each caller decides whether that is fatal (the token) or soft (status, audit,
journal). :func:`write_temp` is steps 1-3 alone, for writers that publish with ``link(2)``
instead of a rename (a write-once claim).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_temp(directory: Path, name: str, data: bytes, *, mode: int) -> Path:
    """Steps 1-3: a fsync'd temporary file with ``data`` and ``mode`` next to ``name``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        try:
            os.fchmod(fd, mode)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` durably and atomically (see the module docstring)."""
    path = Path(path)
    tmp = write_temp(path.parent, path.name, data, mode=mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def create_exclusive(path: Path, data: bytes, *, mode: int = 0o600) -> bool:
    """Create ``path`` with ``data`` only if it does not exist yet (False if it does).

    The write-once counterpart of :func:`write_atomic` for filesystems without ``link(2)``:
    readers may see the file before its content is complete, so they must retry a short read.
    """
    path = Path(path)
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode
        )
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, mode)
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)
    return True


def write_json_atomic(
    path: Path, value: Any, *, mode: int = 0o600, indent: int | None = None
) -> None:
    """``value`` as JSON (sorted keys, trailing newline when indented) via :func:`write_atomic`."""
    text = json.dumps(value, indent=indent, sort_keys=True)
    write_atomic(path, (text + "\n" if indent is not None else text).encode(), mode=mode)


def is_temp_name(name: str) -> bool:
    """Whether a directory entry is a temporary file left by :func:`write_temp`."""
    return name.startswith(".") and name.endswith(".tmp")


__all__ = [
    "create_exclusive",
    "fsync_dir",
    "is_temp_name",
    "write_atomic",
    "write_json_atomic",
    "write_temp",
]
