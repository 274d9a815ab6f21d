"""The floor: a bare relay between a DockMon hub and Docker, with no actors and no safety.

It is what any agent must at least do, written as directly as websocket-client and docker-py
allow: one thread reads frames and answers ``inspect`` and ``list_containers`` in place, one
thread reads Docker's event stream and sends each container event at once. No confirmation, no
outbox, no policy, no audit, no reconnects: it exists only so that ``bench/run.py`` can print
every agent figure beside the floor's, measured in the same run against the same kind of hub.

    python bench/floor.py URL TOKEN DOCKER_HOST ENGINE_ID
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import docker
import websocket


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

    def send(obj: Any) -> None:
        ws.send(json.dumps(obj, separators=(",", ":")))

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
            send({"type": "event", "command": "container_event", "payload": payload,
                  "timestamp": _now()})  # fmt: skip

    threading.Thread(target=events, name="floor-events", daemon=True).start()
    while True:
        opcode, data = ws.recv_data(control_frame=False)
        if opcode != websocket.ABNF.OPCODE_TEXT:
            continue
        frame = json.loads(data)
        if frame.get("type") == "container_operation":
            payload = frame["payload"]
            if payload.get("action") == "inspect":
                body = client.inspect_container(payload["container_id"])
                send({"correlation_id": frame["correlation_id"], "success": True,
                      "container": body})  # fmt: skip
        elif frame.get("type") == "command" and frame.get("command") == "list_containers":
            listed = client.containers(all=True)
            send({"type": "response", "id": frame["id"], "payload": listed, "timestamp": _now()})


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
