"""The ``self_update`` flow (PROTOCOL §7) and the new agent's side of the hand-over."""

from __future__ import annotations

from typing import TYPE_CHECKING

from messages.updates import SelfUpdate

if TYPE_CHECKING:
    from actors.updater import FlowContext, UpdaterSettings


def precheck(settings: UpdaterSettings, request: SelfUpdate) -> str:
    """An error to answer at once instead of acknowledging, or "" to go ahead."""
    return "self_update is not supported by this agent yet"


def run(fc: FlowContext, request: SelfUpdate) -> None:
    """Pull SELF_UPDATE_IMAGE, start the new agent, hand over; report selfupdate_progress."""


def on_connected(fc: FlowContext) -> None:
    """Called each time the agent registers: finish a pending hand-over (new agent side)."""
