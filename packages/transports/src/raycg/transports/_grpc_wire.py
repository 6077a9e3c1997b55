"""What a gRPC stream of raycg carries: its messages, and values cut into them.

A stream (one per channel and destination node) is two gRPC calls on one connection:
the *values* call (client streaming: the writer's messages) and the *credits* call
(server streaming: the receiver's answers). Two calls, not one bidirectional call,
because grpcio's sync API wakes every thread waiting on a call at each of its events:
on one call, the writer's thread listening for credits would wake at every value sent
(docs/transports.md, "gRPC"). Messages are raw bytes (no protobuf: the transports
never import the protos); the first byte says what a message is::

    credits call, request (one message)
      H  u64 nslots | u64 version | channel id (UTF-8)     which ring, how many slots
    values call, writer -> receiver
      A  channel id (UTF-8)                                first message: which stream
      V  u64 seq | u64 meta_len | u64 nbufs | nbufs x u64  a value's header, then the
         buffer lengths | the payload's first bytes         start of its payload
      D  u64 seq | u64 offset | payload bytes              the rest, in order
      C                                                    the writer closed the channel
    credits call, receiver -> writer
      K  u64 released                                      every value below it is free
      X  C|B | message (UTF-8)                             closed / broken, then the end

A value's *payload* is its pickle stream (_serde's ``meta``) followed by its out-of-band
buffers, cut into messages of at most ``chunk_bytes`` (far below gRPC's 4 MB limit;
values of any size cross in order). The receiver checks every seq and offset: a lost
or reordered message breaks the stream instead of corrupting a value.
"""

from __future__ import annotations

import struct

from ._errors import ChannelBroken

HELLO, ATTACH, VALUE, DATA, CLOSE = b"H", b"A", b"V", b"D", b"C"
CREDIT, END = b"K", b"X"
END_CLOSED, END_BROKEN = b"C", b"B"
VERSION = 2  # 2: a stream is two calls (values, credits); 1 was one bidirectional call
# 1 MiB: the throughput of a bare stream levels off near here (benchmarks/bench_grpc.py)
# while a message still costs little memory on either side.
DEFAULT_CHUNK_BYTES = 1 << 20

_HELLO = struct.Struct("<QQ")
_VALUE = struct.Struct("<QQQ")
_DATA = struct.Struct("<QQ")
_U64 = struct.Struct("<Q")


def hello(channel_id: str, nslots: int) -> bytes:
    return HELLO + _HELLO.pack(nslots, VERSION) + channel_id.encode()


def parse_hello(msg: bytes) -> tuple[str, int]:
    """The channel id and slot count a writer asks for.

    Raises:
        ChannelBroken: the message is not a hello of this version.
    """
    if msg[:1] != HELLO or len(msg) < 1 + _HELLO.size:
        raise ChannelBroken(f"the stream did not start with a hello (got {msg[:1]!r})")
    nslots, version = _HELLO.unpack_from(msg, 1)
    if version != VERSION:
        raise ChannelBroken(f"the writer speaks stream version {version}, this node {VERSION}")
    return msg[1 + _HELLO.size :].decode(), nslots


def attach(channel_id: str) -> bytes:
    return ATTACH + channel_id.encode()


def parse_attach(msg: bytes) -> str:
    """The channel id a values call names in its first message.

    Raises:
        ChannelBroken: the message is not an attach.
    """
    if msg[:1] != ATTACH:
        raise ChannelBroken(f"the values stream did not start with its channel id (got {msg[:1]!r})")
    return msg[1:].decode()


def credit(released: int) -> bytes:
    return CREDIT + _U64.pack(released)


def parse_credit(msg: bytes) -> int:
    return int(_U64.unpack_from(msg, 1)[0])


def end(kind: bytes, message: str) -> bytes:
    return END + kind + message.encode()


def single_frame(seq: int, meta: bytes) -> bytes:
    """The one message of a value without out-of-band buffers that fits in one: what
    :func:`frames` makes of it, without its general loop."""
    return VALUE + _VALUE.pack(seq, len(meta), 0) + meta


def frames(seq: int, meta: bytes, raws: list[memoryview], chunk_bytes: int) -> list[bytes]:
    """Value ``seq``'s messages: a header, then its payload in order.

    Each message is a copy (gRPC takes bytes), made now: the caller may change its
    arrays once write returns, as with the ring.
    """
    lengths = [r.nbytes for r in raws]
    head = VALUE + _VALUE.pack(seq, len(meta), len(raws)) + struct.pack(f"<{len(raws)}Q", *lengths)
    out: list[bytes] = []
    parts: list[bytes | memoryview] = [head]
    room = chunk_bytes - len(head)
    offset = 0  # payload bytes already in a message (or in ``parts``)
    for piece in (memoryview(meta), *raws):
        pos = 0
        while pos < piece.nbytes:
            if room <= 0:
                out.append(b"".join(parts))
                parts, room = [DATA + _DATA.pack(seq, offset)], chunk_bytes - 1 - _DATA.size
            n = min(room, piece.nbytes - pos)
            parts.append(piece[pos : pos + n])
            pos, room, offset = pos + n, room - n, offset + n
    out.append(b"".join(parts))
    return out


class Assembler:
    """Rebuilds values from a stream's messages, checking that none is lost.

    Args:
        name: the channel, for errors.
    """

    def __init__(self, name: str):
        self._name = name
        self.next_seq = 0
        self._buf: memoryview | None = None  # the value being assembled
        # Kept from value to value: a fresh 64 MiB bytearray costs more in page faults
        # than the copy into it. (The caller copies a value out before the next comes.)
        self._spare = bytearray()
        self._filled = 0
        self._meta_len = 0
        self._lengths: tuple[int, ...] = ()

    def add(self, msg: bytes) -> tuple[memoryview, list[memoryview]] | None:
        """Take one V or D message; return (meta, buffers) once a value is whole. They
        are views of a buffer that the next large value reuses: copy them out first.

        Raises:
            ChannelBroken: the message is not the one expected next.
        """
        kind = msg[:1]
        if kind == VALUE:
            return self._start(msg)
        if kind == DATA:
            return self._continue(msg)
        raise ChannelBroken(f"channel {self._name!r}: unexpected message {kind!r} in the stream")

    def _start(self, msg: bytes) -> tuple[memoryview, list[memoryview]] | None:
        seq, meta_len, nbufs = _VALUE.unpack_from(msg, 1)
        if self._buf is not None or seq != self.next_seq:
            raise ChannelBroken(
                f"channel {self._name!r}: value #{seq} began where value #{self.next_seq} "
                f"{'was incomplete' if self._buf is not None else 'was due'}: a message was lost"
            )
        at = 1 + _VALUE.size
        self._lengths = struct.unpack_from(f"<{nbufs}Q", msg, at)
        self._meta_len = meta_len
        at += 8 * nbufs
        total = meta_len + sum(self._lengths)
        if len(msg) - at == total:  # the whole value in one message: no copy
            self.next_seq += 1
            return self._split(memoryview(msg)[at:])
        if not total <= len(self._spare) <= 2 * total + DEFAULT_CHUNK_BYTES:
            self._spare = bytearray(total)  # grown, or shrunk after a much larger value
        self._buf = memoryview(self._spare)[:total]
        self._buf[: len(msg) - at] = memoryview(msg)[at:]
        self._filled = len(msg) - at
        return None

    def _continue(self, msg: bytes) -> tuple[memoryview, list[memoryview]] | None:
        seq, offset = _DATA.unpack_from(msg, 1)
        if self._buf is None or seq != self.next_seq or offset != self._filled:
            raise ChannelBroken(
                f"channel {self._name!r}: bytes at offset {offset} of value #{seq} came where "
                f"offset {self._filled} of value #{self.next_seq} was due: a message was lost"
            )
        n = len(msg) - 1 - _DATA.size
        if self._filled + n > len(self._buf):
            raise ChannelBroken(f"channel {self._name!r}: value #{seq} is longer than its header says")
        self._buf[self._filled : self._filled + n] = memoryview(msg)[1 + _DATA.size :]
        self._filled += n
        if self._filled < len(self._buf):
            return None
        buf, self._buf = self._buf, None
        self.next_seq += 1
        return self._split(buf)

    def _split(self, payload: memoryview) -> tuple[memoryview, list[memoryview]]:
        meta = payload[: self._meta_len]
        bufs, at = [], self._meta_len
        for n in self._lengths:
            bufs.append(payload[at : at + n])
            at += n
        return meta, bufs
