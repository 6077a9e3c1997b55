"""The transport layer's exceptions.

raycg.transports never imports Ray. It raises these classes, and the runtime maps
them to Ray's exceptions in one place (``raycg.runtime._errors``): ChannelClosed and
ChannelBroken become ``RayChannelError`` (or ``ActorDiedError`` when the runtime saw
the peer die), ChannelTimeout becomes ``RayChannelTimeoutError`` and SlotPinned
becomes ``RayCgraphCapacityExceeded``.

Closed is not broken (trio's distinction): *closed* means an endpoint of this
channel asked for it to stop; *broken* means something went wrong that nobody
asked for: the peer process died, or the shared header is not what we wrote.
"""

from __future__ import annotations


class ChannelError(Exception):
    """Base class of every error a channel raises."""


class ChannelClosed(ChannelError):
    """The channel was closed by one of its endpoints; no value will come or go."""


class ChannelBroken(ChannelError):
    """The channel can no longer be used: its peer died or its memory is corrupt."""


class ChannelTimeout(ChannelError, TimeoutError):
    """A blocking call ran past its timeout. The channel is still usable."""


class SlotPinned(ChannelTimeout):
    """A writer waits for a slot that a reader pins with a zero-copy value it holds.

    Attributes:
        reader_index: the reader that holds the value.
        seq: the sequence number of the pinned value in the channel.
        description: what the value is (type, shape, dtype), as the reader described it.
    """

    def __init__(self, message: str, *, reader_index: int, seq: int, description: str):
        super().__init__(message)
        self.reader_index = reader_index
        self.seq = seq
        self.description = description


class ValueNotSerializable(ChannelError, TypeError):
    """A value could not be serialized. Nothing was written; the channel is usable."""
