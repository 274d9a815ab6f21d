"""The frames the agent writes (actors/link/frames.py): byte for byte websocket-client's, and
read back as sent by the ``websockets`` parser the hub uses (an RFC 6455 server's view)."""

from __future__ import annotations

import os

import pytest
import websocket
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from actors.link import frames
from actors.link.frames import _python_mask, client_frame

#: every length encoding (7-bit, 16-bit, 64-bit) and the edges between them
SIZES = (0, 1, 125, 126, 127, 65_535, 65_536, 300_000)


def _websocket_client(data: str | bytes, opcode: int, key: bytes) -> bytes:
    frame = websocket.ABNF.create_frame(data, opcode)
    frame.get_mask_key = lambda n: key
    return frame.format()


@pytest.mark.parametrize("size", SIZES)
def test_a_frame_is_byte_for_byte_websocket_clients(size: int) -> None:
    text = ("é" * size)[:size]  # two bytes a character: the length counts UTF-8 bytes
    key = os.urandom(4)
    for data, opcode in ((text, websocket.ABNF.OPCODE_TEXT), (b"7", websocket.ABNF.OPCODE_PING)):
        assert client_frame(data, opcode, lambda n: key) == _websocket_client(data, opcode, key)


@pytest.mark.parametrize("size", SIZES)
def test_a_server_reads_the_payload_as_sent(size: int) -> None:
    payload = os.urandom(size)
    reader = StreamReader()
    reader.feed_data(client_frame(payload, websocket.ABNF.OPCODE_BINARY))
    parser = Frame.parse(reader.read_exact, mask=True)
    try:
        next(parser)
    except StopIteration as done:
        frame = done.value
    assert frame.opcode is Opcode.BINARY and frame.fin and frame.data == payload


def test_each_frame_gets_a_fresh_random_key() -> None:
    keys = {client_frame(b"x", websocket.ABNF.OPCODE_TEXT)[2:6] for _ in range(64)}
    assert len(keys) > 60


def test_the_c_mask_is_used_and_equals_websocket_clients() -> None:
    assert frames.mask is not _python_mask  # the websockets wheel is a dependency
    data, key = os.urandom(10_001), os.urandom(4)
    assert frames.mask(data, key) == _python_mask(data, key) == websocket.ABNF.mask(key, data)
