"""The Connection's link state (actors/session/state.py): one enum, no threads."""

from __future__ import annotations

from actors.session.state import LinkState


def test_the_states_keep_the_names_logs_and_timers_use() -> None:
    assert [s.value for s in LinkState] == [
        "waiting",
        "describing",
        "dialing",
        "authenticating",
        "connected",
        "handing_over",
        "handed_over",
        "stopped",
    ]
    # an attempt timer's phase is the state it guards; its message names it as a word
    assert LinkState.DIALING == "dialing" and f"timed out while {LinkState.DIALING}" == (
        "timed out while dialing"
    )
    assert str(LinkState.CONNECTED) == "connected"


def test_hand_over_and_idle_states() -> None:
    assert {s for s in LinkState if s.hands_over} == {
        LinkState.HANDING_OVER,
        LinkState.HANDED_OVER,
    }
    assert {s for s in LinkState if s.idle} == {
        LinkState.HANDING_OVER,
        LinkState.HANDED_OVER,
        LinkState.STOPPED,
    }
