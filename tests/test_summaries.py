"""Docker's container list split into each container's bytes (actors/runtime/summaries.py).

The splice must give exactly what decoding the list, adding the keys and encoding it again
gives, or refuse (``None``) so the gateway decodes instead: pure cases first, then the real
daemon's own list, then the gateway's two paths (spliced on the lean read path, decoded with
docker-py) side by side on the real daemon.
"""

from __future__ import annotations

import json
from typing import Any

import docker
import pytest

from actors.runtime.docker_client import client_factory as docker_clients
from actors.runtime.docker_http import LeanDocker, lean_address
from actors.runtime.summaries import CLOSE, join_containers, split_containers
from messages.common import loads
from messages.docker import CommandSucceeded, ListContainers
from tests.support.daemon import PrivateDockerd
from tests.support.fakes import start_gateway
from tests.support.registry import LocalRegistry, iter_stream_errors

ADDED = b',"RepoDigests":["r@sha256:1"],"StartedAt":"2026-01-01T00:00:00Z","Env":{"A":"\xc3\xbc"}'


def pieces(raw: bytes, added: bytes = b"") -> list[bytes | memoryview]:
    listed = split_containers(raw)
    assert listed is not None
    return [piece for _, head in listed for piece in (head, added, CLOSE)]


def spliced(raw: bytes) -> Any:
    return loads(join_containers(pieces(raw, ADDED)))


def read(raw: bytes) -> list[tuple[str, str, str, bytes]]:
    """What the splice read of each container, and its bytes without the closing brace."""
    listed = split_containers(raw)
    assert listed is not None
    return [(s.Id, s.State, s.ImageID, bytes(head)) for s, head in listed]


def decoded(raw: bytes) -> Any:
    added = json.loads(b"{" + ADDED[1:] + b"}")
    return [{**summary, **added} for summary in json.loads(raw)]


def test_each_container_keeps_its_bytes_and_gets_the_added_keys_at_its_end() -> None:
    raw = (
        b'[ {"Id":"a1","State":"running","ImageID":"sha256:i1","Labels":{"Id":"x",'
        b'"q":"},{\\"Id\\":\\"fake\\"}","u":"\\u003cb\\u003e \xe2\x98\x83"},"Ports":[]} ,\n'
        b'{"Id":"b2","Created":1.5e9,"Mounts":[{"Id":"m"}]}]\n'
    )
    assert read(raw) == [
        ("a1", "running", "sha256:i1", raw[2 : raw.index(b"} ,")]),
        ("b2", "", "", raw[raw.index(b'{"Id":"b2"') : raw.rindex(b"}]")]),
    ]
    assert spliced(raw) == decoded(raw)
    text = join_containers(pieces(raw))
    assert '"u":"\\u003cb\\u003e \u2603"' in text, "Docker's escapes are kept, not re-encoded"
    assert split_containers(b"[]") == [] and join_containers([]) == "[]"


def test_each_head_is_a_view_of_dockers_body_not_a_copy() -> None:
    raw = b'[{"Id":"a1"},{"Id":"b2","State":"exited"}]'
    listed = split_containers(raw)
    assert listed is not None
    assert all(isinstance(head, memoryview) and head.obj is not None for _, head in listed)
    assert [bytes(head) for _, head in listed] == [b'{"Id":"a1"', b'{"Id":"b2","State":"exited"']


def test_pieces_that_do_not_end_each_container_are_refused() -> None:
    with pytest.raises(ValueError, match="CLOSE"):
        join_containers([b'{"Id":"a"}'])


@pytest.mark.parametrize(
    "raw",
    [
        b'{"Id":"a"}',  # not a list
        b'[{"Id":"a"},7]',  # an item not an object
        b'[{"Names":["/x"]}]',  # no Id
        b'[{"Id":5}]',  # an Id not a string
        b'[{"Id":"a","State":null}]',  # a key the agent reads, of the wrong type
        b'[{"Id":"a","Env":["A=1"]}]',  # a key the agent adds, already there
        b'[{"Id":"a","RepoDigests":[]}]',
        b'[{"Id":"a","StartedAt":""}]',
        b'[{"Id":"a"}',  # cut short
        b'[{"Id":"a"}] [',  # trailing bytes
        b"",
    ],
)
def test_a_list_the_splice_cannot_take_exactly_is_left_to_the_decoder(raw: bytes) -> None:
    assert split_containers(raw) is None


def test_bytes_that_are_not_utf8_are_refused_when_the_reply_is_joined() -> None:
    raw = b'[{"Id":"a","Labels":{"k":"\xff"}}]'
    assert split_containers(raw) is not None, "msgspec skips the label's string unchecked"
    with pytest.raises(ValueError):  # joining checks it
        join_containers(pieces(raw))


def test_the_real_daemons_list_splices_to_what_decoding_gives(
    dockerd: PrivateDockerd, docker_client: docker.DockerClient, make_container: Any
) -> None:
    labels = {"dockmon-test.Id": '},{"Id":"x"}', "dockmon-test.note": "<b>&\u2028 \u2603"}
    made = [make_container(["sleep", "3600"], labels=labels), make_container(["true"], start=False)]
    address = lean_address(dockerd.base_url)
    assert address is not None
    lean = LeanDocker(address, timeout=30)
    try:
        raw = lean.containers_raw(all=True)
    finally:
        lean.close()
    assert split_containers(raw) is not None, "Docker's own list must take the splice"
    ours = [(i, state, image) for i, state, image, _ in read(raw)]
    theirs = docker_client.api.containers(all=True)
    assert ours == [(s["Id"], s["State"], s["ImageID"]) for s in theirs]
    assert {c.id for c in made} <= {i for i, _, _ in ours}
    assert spliced(raw) == decoded(raw)


def _listed_by(gateway_kwargs: dict[str, Any], docker_host: str) -> list[dict[str, Any]]:
    gateway = start_gateway(docker_host, workers=1, **gateway_kwargs)
    try:
        replies = []
        for n in range(2):  # the first fills the cache, the second is answered from it
            gateway.ref.tell(ListContainers(request_id=f"r{n}"))
            reply = gateway.connection.expect(CommandSucceeded, timeout=30)
            replies.append(loads(reply.payload.text))
        assert replies[0] == replies[1]
        for summary in replies[1]:
            summary.pop("Status")  # "Up 2 seconds": a clock, not data
        return list(replies[1])
    finally:
        gateway.stop()


def test_the_gateways_spliced_list_equals_its_decoded_one_on_the_real_daemon(
    dockerd: PrivateDockerd,
    docker_client: docker.DockerClient,
    make_container: Any,
    registry: LocalRegistry,
) -> None:
    pushed = make_container(["true"], start=False).commit(
        repository=registry.repository("dockmon-test/spliced"), tag="v1"
    )
    assert not list(
        iter_stream_errors(
            docker_client.images.push(
                registry.repository("dockmon-test/spliced"), "v1", stream=True, decode=True
            )
        )
    )
    digests = docker_client.api.inspect_image(pushed.id)["RepoDigests"]
    assert digests, "the push gives the image a digest to list"
    made = [
        make_container(
            ["sleep", "3600"],
            image=pushed.id,
            environment={"SNOW": "\u2603", "Q": 'a"b'},
            labels={"dockmon-test.Id": '},{"Id":"x"}'},
        ),
        make_container(["true"], start=False),
    ]
    spliced = _listed_by({}, dockerd.base_url)
    decoded = _listed_by(
        {"client_factory": docker_clients(dockerd.base_url, timeout=30)}, dockerd.base_url
    )
    assert spliced == decoded
    ours = {s["Id"]: s for s in spliced}
    running, created = (ours[c.id] for c in made)
    assert running["RepoDigests"] == digests
    assert running["Env"]["SNOW"] == "\u2603" and running["Env"]["Q"] == 'a"b'
    assert (
        running["StartedAt"]
        == docker_client.api.inspect_container(made[0].id)["State"]["StartedAt"]
    )
    assert "StartedAt" not in created and created["RepoDigests"] == []
