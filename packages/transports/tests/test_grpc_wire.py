"""_grpc_wire.py: values cut into messages and rebuilt, and lost messages noticed."""

from __future__ import annotations

import numpy as np
import pytest

from raycg.transports import ChannelBroken, _serde
from raycg.transports import _grpc_wire as wire


def roundtrip(value: object, chunk_bytes: int) -> tuple[object, int]:
    meta, raws = _serde.encode(value)
    msgs = wire.frames(0, meta, raws, chunk_bytes)
    assert all(len(m) <= chunk_bytes for m in msgs)
    assembler = wire.Assembler("test")
    parts = [assembler.add(m) for m in msgs]
    assert all(p is None for p in parts[:-1])
    whole = parts[-1]
    assert whole is not None
    return _serde.decode(whole[0], list(whole[1])), len(msgs)


@pytest.mark.parametrize("chunk_bytes", [64, 100, 4096, 1 << 20])
@pytest.mark.parametrize(
    "value",
    [
        0,
        "x" * 10_000,
        b"\x00\xff" * 50_000,  # a large pickle stream and no buffers
        np.arange(100_000),
        [np.arange(3), np.ones((7, 9)), {"k": np.zeros(5000, dtype=np.uint8)}],  # several buffers
        np.zeros(0),
    ],
    ids=["int", "str", "bytes", "array", "several", "empty"],
)
def test_values_survive_any_chunking(value: object, chunk_bytes: int) -> None:
    got, _ = roundtrip(value, chunk_bytes)
    if isinstance(value, np.ndarray):
        assert np.array_equal(got, value)  # type: ignore[arg-type]
    elif isinstance(value, list):
        assert np.array_equal(got[0], value[0]) and np.array_equal(got[2]["k"], value[2]["k"])  # type: ignore[index]
    else:
        assert got == value


def test_a_large_value_is_cut_into_messages_under_the_chunk_size() -> None:
    _, n = roundtrip(np.zeros(10 << 20, dtype=np.uint8), 1 << 20)
    assert n == 11  # ten full chunks and the header's overhead spills into one more


def test_a_small_value_is_one_message_and_rebuilt_without_a_copy() -> None:
    meta, raws = _serde.encode(np.arange(10))
    (msg,) = wire.frames(0, meta, raws, 4096)
    _, bufs = wire.Assembler("test").add(msg)  # type: ignore[misc]
    assert bufs[0].obj is msg


def _messages(nvalues: int, chunk_bytes: int = 256) -> list[bytes]:
    out = []
    for seq in range(nvalues):
        meta, raws = _serde.encode(np.full(200, seq, dtype=np.int64))
        out += wire.frames(seq, meta, raws, chunk_bytes)
    return out


@pytest.mark.parametrize("lost", [0, 1, 7, 8])
def test_a_lost_message_breaks_the_stream(lost: int) -> None:
    msgs = _messages(2)
    del msgs[lost]
    assembler = wire.Assembler("edge")
    with pytest.raises(ChannelBroken, match=r"'edge'.*was lost"):
        for m in msgs:
            assembler.add(m)


def test_reordered_messages_break_the_stream() -> None:
    msgs = _messages(1)
    msgs[1], msgs[2] = msgs[2], msgs[1]
    assembler = wire.Assembler("edge")
    with pytest.raises(ChannelBroken, match="was lost"):
        for m in msgs:
            assembler.add(m)


def test_values_are_rebuilt_in_order() -> None:
    assembler = wire.Assembler("edge")
    firsts = []
    for m in _messages(3):
        part = assembler.add(m)
        if part is not None:  # decoded (copied) before the next value reuses the buffer
            firsts.append(int(_serde.decode(part[0], [bytes(b) for b in part[1]])[0]))  # type: ignore[index]
    assert firsts == [0, 1, 2]


def test_the_assembly_buffer_is_reused_and_shrinks_after_a_much_larger_value() -> None:
    assembler = wire.Assembler("edge")

    def assemble(nbytes: int) -> bytearray:
        meta, raws = _serde.encode(np.zeros(nbytes, dtype=np.uint8))
        for m in wire.frames(assembler.next_seq, meta, raws, 1 << 20):
            assembler.add(m)
        return assembler._spare

    first = assemble(8 << 20)
    assert assemble(8 << 20) is first  # no new 8 MiB to fault in
    smaller = assemble(3 << 20)
    assert smaller is not first and len(smaller) < (4 << 20)  # not kept at 8 MiB for good


def test_hello() -> None:
    assert wire.parse_hello(wire.hello("a.b", 4)) == ("a.b", 4)
    with pytest.raises(ChannelBroken, match="did not start with a hello"):
        wire.parse_hello(wire.CREDIT + b"\0" * 20)
    bad_version = wire.HELLO + wire._HELLO.pack(4, wire.VERSION + 1) + b"a"
    with pytest.raises(ChannelBroken, match="version"):
        wire.parse_hello(bad_version)


def test_a_small_value_is_one_message_either_way() -> None:
    meta = b"x" * 100
    assert [wire.single_frame(7, meta)] == wire.frames(7, meta, [], 4096)
    assembler = wire.Assembler("edge")
    assembler.next_seq = 7
    got_meta, bufs = assembler.add(wire.single_frame(7, meta))  # type: ignore[misc]
    assert bytes(got_meta) == meta and bufs == []


def test_attach() -> None:
    assert wire.parse_attach(wire.attach("a.b")) == "a.b"
    with pytest.raises(ChannelBroken, match="did not start with its channel id"):
        wire.parse_attach(wire.hello("a.b", 4))


def test_unexpected_message_kind() -> None:
    with pytest.raises(ChannelBroken, match="unexpected message"):
        wire.Assembler("edge").add(b"Zzz")
