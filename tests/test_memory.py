"""actors/runtime/memory.py: freed heap goes back to the OS (bench/run.py measures the RSS)."""

from __future__ import annotations

import platform

import pytest

from actors.runtime import memory


def test_malloc_trim_is_found_on_glibc_and_returns_pages() -> None:
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")
    assert memory._TRIM is not None
    blocks = [bytearray(64 * 1024) for _ in range(2000)]  # heap blocks (below mmap's threshold)
    kept = blocks[::2]  # holes in the middle of the heap: free() alone cannot return them
    del blocks
    assert memory.release_memory() is True
    del kept


def test_without_malloc_trim_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_TRIM", None)
    assert memory.release_memory() is False
