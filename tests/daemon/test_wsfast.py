"""The frames personad writes by hand are the bytes websockets would write, and parse back."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from daemon.bus.session import binary_header
from daemon.wsfast import masked_binary_frame

SIZES = [1, 125, 126, 127, 65535, 65536, 200_000]


def parse(data: bytes, *, mask: bool) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=mask, max_size=None, extensions=None)
    with pytest.raises(StopIteration) as done:
        next(parser)
    frame: Frame = done.value.value
    assert not reader.buffer  # the whole frame, nothing more
    return frame


@pytest.mark.parametrize("size", SIZES)
def test_the_bus_frames_as_websockets_does(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    expected = Frame(Opcode.BINARY, payload).serialize(mask=False, extensions=[])
    assert binary_header(size) + payload == expected


@pytest.mark.parametrize("size", SIZES)
def test_a_client_frame_parses_back_masked(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"y" * (size % 256)
    data = masked_binary_frame(payload)
    frame = parse(data, mask=True)
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.BINARY, True, payload)


def test_masking_keys_differ_from_frame_to_frame() -> None:
    keys = {masked_binary_frame(b"same")[2:6] for _ in range(2000)}
    assert len(keys) > 1990  # 4 random bytes each: a repeat is rare, a pattern would show
