"""The one interface every transport implements."""

from __future__ import annotations

import abc


class Channel(abc.ABC):
    """One endpoint of a channel: one writer puts values, each reader gets every value
    in order.

    ``timeout_s`` is ``None`` (wait forever) or seconds >= 0 (0: do not wait).

    Raises (any blocking call):
        ChannelClosed: an endpoint closed the channel.
        ChannelBroken: the peer died or the channel's memory is corrupt.
        ChannelTimeout: the timeout passed; the channel is still usable.
    """

    @abc.abstractmethod
    def write(self, value: object, timeout_s: float | None = None) -> None:
        """Publish ``value`` to every reader (write end only)."""

    @abc.abstractmethod
    def read(self, timeout_s: float | None = None) -> object:
        """Return the next value (read end only)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the channel for every endpoint. Idempotent, never blocks, wakes every
        waiter at once with ChannelClosed."""

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wrong_end(channel: object, op: str) -> TypeError:
    return TypeError(f"{channel!r} cannot {op}: it is the other end of the channel")
