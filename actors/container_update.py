"""The ``update_container`` flow (PROTOCOL §6) and recovery of interrupted updates."""

from __future__ import annotations

from typing import TYPE_CHECKING

from messages.updates import UpdateContainer

if TYPE_CHECKING:
    from actors.updater import FlowContext


def run(fc: FlowContext, request: UpdateContainer) -> None:
    """Pull, recreate, health-gate, roll back on failure; report progress through ``fc.emit``."""
    fc.emit(
        "update_progress",
        {
            "container_id": request.container_id[:12],
            "stage": "failed",
            "message": "container updates are not implemented by this agent yet",
        },
    )


def recover(fc: FlowContext) -> None:
    """Finish or roll back updates a crash interrupted (journals in ``fc.journal_dir``)."""
