"""actors/runtime/memory.py: freed heap goes back to the OS (bench/run.py measures the RSS)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from actors.runtime import memory
from tests.support.hostenv import REPO_ROOT


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


def _python(
    script: str, *args: str, variables: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter, with none of glibc's MALLOC_ variables but
    ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO_ROOT,
        env=env | (variables or {}),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


ARENAS = """
import sys, threading
from actors.runtime import memory
if sys.argv[1] == "tuned":
    assert memory.tune_allocator({}) is True
held = []
ready = threading.Barrier(5)
def work():
    held.append([bytearray(1000) for _ in range(100)])  # malloc'd (over pymalloc's 512 bytes)
    ready.wait()
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
ready.wait()
memory._libc_function("malloc_stats")()  # one "Arena N:" block per arena, on stderr
"""


@pytest.mark.parametrize(("mode", "many"), [("tuned", False), ("default", True)])
def test_the_tuned_allocator_keeps_one_arena_for_all_threads(mode: str, many: bool) -> None:
    """Each thread's own arena kept its own leftovers after a peak (bench/run.py, peak row)."""
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("arenas and mallopt are glibc's")
    done = _python(ARENAS, mode)
    assert "Arena 0:" in done.stderr
    assert ("Arena 1:" in done.stderr) is many, done.stderr


def test_a_variable_the_user_set_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []

    def mallopt(param: int, value: int) -> int:
        calls.append((param, value))
        return 1

    monkeypatch.setattr(memory, "_MALLOPT", mallopt)
    assert memory.tune_allocator({"MALLOC_ARENA_MAX": "4"}) is True
    assert calls == [
        (memory.M_MMAP_THRESHOLD, 4 * 1024 * 1024),
        (memory.M_TRIM_THRESHOLD, 8 * 1024 * 1024),
    ]
    every = {"MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": "1", "MALLOC_TRIM_THRESHOLD_": "1"}
    assert memory.tune_allocator(every) is False


FAULTS = """
import os, resource
from actors.runtime import memory
memory.tune_allocator(os.environ)
def reply():
    data = b"x" * (800 * 1024)  # a 1,000-container list's buffer, written in full
    del data
reply()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    reply()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.parametrize(
    ("variables", "faulted"), [({}, False), ({"MALLOC_MMAP_THRESHOLD_": "131072"}, True)]
)
def test_a_big_replys_buffer_is_reused_not_mapped_page_by_page_again(
    variables: dict[str, str], faulted: bool
) -> None:
    """Each big buffer mapped afresh faulted in all its pages: 5 ms of a 1,000-container list.
    The second case (the old 128 KiB threshold) shows the test can tell."""
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    faults = int(_python(FAULTS, variables=variables).stdout)
    pages = 50 * 800 * 1024 // 4096
    assert (faults > pages // 2) is faulted, f"{faults} page faults for 50 buffers of {pages // 50}"
