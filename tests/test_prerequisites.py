"""The prerequisite rule (tests/support/prerequisites.py): a test that needs root, a tool or a
mount skips on a developer machine without it, and fails in CI, where .ci/run provides it all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.prerequisites import check_markers, require, requires


def test_a_missing_prerequisite_skips_on_a_developer_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CI", raising=False)
    require(True, "present")
    with pytest.raises(pytest.skip.Exception, match=r"^needs a thing$"):
        require(False, "needs a thing")


def test_a_missing_prerequisite_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    require(True, "present")
    with pytest.raises(pytest.fail.Exception, match=r"^needs a thing \(CI is set"):
        require(False, "needs a thing")


class _Item:
    def __init__(self, *marks: pytest.MarkDecorator) -> None:
        self.marks = [m.mark for m in marks]

    def iter_markers(self, name: str) -> Iterator[Any]:
        return (m for m in self.marks if m.name == name)


def test_the_requires_marker_applies_the_same_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    check_markers(_Item(requires(True, "present"), pytest.mark.slow))  # type: ignore[arg-type]
    with pytest.raises(pytest.fail.Exception, match=r"^needs iproute2"):
        check_markers(_Item(requires(False, "needs iproute2")))  # type: ignore[arg-type]
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=r"^needs iproute2$"):
        check_markers(_Item(requires(False, "needs iproute2")))  # type: ignore[arg-type]
