"""The floor: a bare relay between a DockMon hub and Docker, with no actors and no safety.

It is what any agent must at least do, written as directly as websocket-client and docker-py
allow: one thread reads frames and answers ``inspect`` and ``list_containers`` in place, one
thread reads Docker's event stream and sends each container event at once. No confirmation, no
outbox, no policy, no audit, no reconnects: it exists only so that ``bench/run.py`` can print
every agent figure beside the floor's, measured in the same run against the same kind of hub.

It writes its frames as the agent does (``actors.link.frames``: masked in C), so the floor is
no slower than the agent for a reason no agent need share. The ``floor_handoff`` command
(payload ``{"on": true}``) makes the events thread hand each event to a sender thread over a
queue instead of sending it itself: the floor plus the one thread hand-off an actor design
costs (the agent's EventStreamer reader tells the Connection, which sends).

A request marked ``"cached": true`` in its payload is answered with the floor's last answer to
that request, encoded once, without asking Docker: the hub and the WebSocket alone (the
``transport`` figure of the read rows), the part of every round trip no agent can take away.

    python bench/floor.py URL TOKEN DOCKER_HOST ENGINE_ID
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import docker
import websocket

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from actors.link.frames import client_frame


def _now() -> str:
    ns = time.time_ns()
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{frac:09d}Z"


def _local(seconds: int) -> str:
    text = datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def main(url: str, token: str, docker_host: str, engine_id: str) -> int:
    client = docker.APIClient(base_url=docker_host)
    events_client = docker.APIClient(base_url=docker_host)
    ws = websocket.create_connection(
        url.replace("http://", "ws://", 1) + "/api/agent/ws",
        suppress_origin=True,
        enable_multithread=True,  # the events thread and pong replies send concurrently
    )
    capabilities = {"container_operations": True, "event_streaming": True}
    register = {
        "type": "register",
        "token": token,
        "engine_id": engine_id,
        "hostname": "floor",
        "hostname_source": "agent_name",
        "version": "floor",
        "proto_version": "1.1",
        "force_unique_registration": False,
        "capabilities": capabilities,
    }
    ws.send(json.dumps(register))
    reply = json.loads(ws.recv())
    if reply.get("type") != "auth_success":
        print(f"floor: registration failed: {reply}", file=sys.stderr)
        return 1

    sock = ws.sock
    assert sock is not None  # connected above

    def send_text(text: str) -> None:
        frame = client_frame(text, websocket.ABNF.OPCODE_TEXT)
        with ws.lock:
            sock.sendall(frame)

    def send(obj: Any) -> None:
        send_text(json.dumps(obj, separators=(",", ":")))

    handoff = threading.Event()  # set: events go to the sender thread over ``handed``
    handed: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()

    def sender() -> None:
        while True:
            send(handed.get())

    def events() -> None:
        for raw in events_client.events(filters={"type": ["container"]}, decode=True):
            actor = raw.get("Actor") or {}
            attributes = actor.get("Attributes") or {}
            payload = {
                "container_id": actor.get("ID", ""),
                "container_name": attributes.get("name", ""),
                "image": attributes.get("image", ""),
                "action": raw.get("Action", ""),
                "timestamp": _local(int(raw.get("time", 0))),
                "attributes": attributes,
            }
            frame = {"type": "event", "command": "container_event", "payload": payload,
                     "timestamp": _now()}  # fmt: skip
            if handoff.is_set():
                handed.put(frame)
            else:
                send(frame)

    threading.Thread(target=events, name="floor-events", daemon=True).start()
    threading.Thread(target=sender, name="floor-sender", daemon=True).start()
    cache: dict[str, str] = {}  # request kind -> the last answer's JSON, for "cached" requests

    def answer(kind: str, cached: bool, ask: Callable[[], Any]) -> str:
        if not cached or kind not in cache:
            cache[kind] = json.dumps(ask(), separators=(",", ":"))
        return cache[kind]

    while True:
        opcode, data = ws.recv_data(control_frame=False)
        if opcode != websocket.ABNF.OPCODE_TEXT:
            continue
        frame = json.loads(data)
        payload = frame.get("payload") or {}
        cached = payload.get("cached") is True
        if frame.get("type") == "container_operation" and payload.get("action") == "inspect":
            body = answer(
                "inspect", cached, partial(client.inspect_container, payload["container_id"])
            )
            send_text(f'{{"correlation_id":{json.dumps(frame["correlation_id"])},"success":true,'
                      f'"container":{body}}}')  # fmt: skip
        elif frame.get("type") == "command" and frame.get("command") == "list_containers":
            listed = answer("list", cached, partial(client.containers, all=True))
            send_text(f'{{"type":"response","id":{json.dumps(frame["id"])},"payload":{listed},'
                      f'"timestamp":"{_now()}"}}')  # fmt: skip
        elif frame.get("type") == "command" and frame.get("command") == "floor_handoff":
            (handoff.set if payload.get("on") else handoff.clear)()
            send({"type": "response", "id": frame["id"], "payload": {}, "timestamp": _now()})


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
