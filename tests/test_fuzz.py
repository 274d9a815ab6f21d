"""Property-based fuzzing of everything the backend can send (issue 6, item 5).

Whatever arrives — any JSON, any payload for any known command or frame type — decoding never
raises, and every request that carries an id gets a typed command or a typed failure reply.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.rules.policy import Policy
from messages.families import FRAME_DECODERS, GENERIC_DECODERS
from messages.wire import (
    AuthRejected,
    AuthSucceeded,
    IgnoredFrame,
    RejectedRequest,
    Request,
    decode_envelope,
    decode_frame,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
ACTIONS = ["start", "stop", "restart", "remove", "kill", "rename", "get_logs", "inspect", "x"]
KEYS = [
    "container_id",
    "timeout",
    "force",
    "new_name",
    "tail",
    "action",
    "image",
    "paths",
    "name",
    "session_id",
    "data",
]
KEYS += ["configs", "network_id", "volume_name", "registry_auth", "cols", "rows", "max_depth"]
payloads = json_values | st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=50))
def test_arbitrary_text_never_raises(text: str | bytes) -> None:
    assert decode_frame(text) is not None


@FUZZ
@given(json_values)
def test_arbitrary_json_never_raises(value: Any) -> None:
    decoded = decode_frame(json.dumps(value))
    if not isinstance(value, dict):
        assert isinstance(decoded, IgnoredFrame)


@FUZZ
@given(st.sampled_from(sorted(GENERIC_DECODERS)), payloads, st.booleans())
def test_every_generic_command_answers_any_payload(name: str, payload: Any, give: bool) -> None:
    frame: dict[str, Any] = {"type": "command", "command": name, "id": "r1", "correlation_id": "r1"}
    if give:
        frame["payload"] = payload
    decoded = decode_frame(json.dumps(frame))
    assert not isinstance(decoded, IgnoredFrame | AuthSucceeded | AuthRejected)
    if isinstance(decoded, RejectedRequest):
        assert decoded.reply.request_id == "r1" and decoded.reply.error
    else:
        assert getattr(decoded, "request_id", None) == "r1"


@FUZZ
@given(st.sampled_from(ACTIONS), payloads)
def test_every_container_action_answers_any_payload(action: str, payload: Any) -> None:
    body = dict(payload) if isinstance(payload, dict) else {}
    body["action"] = action
    frame = {"type": "container_operation", "id": "c1", "correlation_id": "c1", "payload": body}
    decoded = decode_frame(json.dumps(frame))
    assert not isinstance(decoded, IgnoredFrame)
    assert getattr(getattr(decoded, "reply", decoded), "request_id", None) == "c1"


@FUZZ
@given(st.sampled_from(sorted(FRAME_DECODERS)), payloads)
def test_other_frame_types_never_raise(kind: str, payload: Any) -> None:
    frame = {"type": kind, "payload": payload}
    assert decode_frame(json.dumps(frame)) is not None
    envelope = decode_envelope(json.dumps(frame))
    assert isinstance(envelope, Request) and envelope.operation == kind
    Policy(read_only=True).judge(envelope)  # the policy's view of any request never raises either
