"""The one rule for what a test needs from the machine: skip on a developer machine, fail in CI.

``.ci/run`` installs every prerequisite and runs as root, so in CI (``CI`` set) a missing one is
a broken setup and must fail loudly instead of turning into a quiet skip. Every test that needs
root, a tool, a mount or a network resource says so through :func:`require` (inside a test or
fixture) or :func:`requires` (a marker, for a whole test or module); tests/conftest.py applies
the marker before each test.
"""

from __future__ import annotations

import os

import pytest

MARKER = "requires"


def require(condition: bool, reason: str) -> None:
    """Go on if ``condition`` holds; otherwise skip, or fail when ``CI`` is set."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: .ci/run should have provided it)", pytrace=False)
    pytest.skip(reason)


def requires(condition: bool, reason: str) -> pytest.MarkDecorator:
    """:func:`require` as a marker: ``@requires(shutil.which("ip") is not None, "iproute2")``."""
    return getattr(pytest.mark, MARKER)(condition=condition, reason=reason)


def check_markers(item: pytest.Item) -> None:
    """Apply every :func:`requires` marker of ``item`` (from tests/conftest.py, at setup)."""
    for mark in item.iter_markers(MARKER):
        require(bool(mark.kwargs["condition"]), str(mark.kwargs["reason"]))
