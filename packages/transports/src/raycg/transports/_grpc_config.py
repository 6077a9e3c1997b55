"""How raycg's gRPC streams are set up: the method, keepalives, limits.

Liveness comes from HTTP/2 keepalive pings, answered by gRPC's own threads whatever
the application does, and costing nothing per value. A peer process that dies has its
sockets reset by the kernel, which fails the stream at once. A peer that goes *silent*
(its node paused, vanished, or cut off: no reset ever comes) is declared broken only
once it has been silent for ``SILENCE_S``: pings every ``KEEPALIVE_S``, each given that
long for its answer (gRPC gives the socket's unacknowledged data as long: TCP_USER_TIMEOUT).

Why that long: a silence that ends before Ray's GCS would declare the node dead is a
stall, not a failure. The caller sees ``ChannelTimeout`` at its read or write timeout
and the stream goes on once the peer is back; breaking it sooner would tear down a
graph that Ray itself keeps running. And a silence that outlasts it ends with Ray's
verdict already in, so the runtime can say which node was lost. So ``SILENCE_S`` is
Ray's node-death window, read as Ray reads it from the environment
(``RAY_health_check_*``, Ray's defaults otherwise; ``silence_s``), or
``RAYCG_GRPC_SILENCE_S`` where it is set. This package never imports Ray: the runtime's
tests check that this computation agrees with Ray's own configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

SERVICE = "raycg.Stream"
METHOD = "Open"  # a stream's credits call (its values call: SEND_METHOD); see _grpc_wire
METHOD_PATH = f"/{SERVICE}/{METHOD}"
SEND_METHOD = "Send"
SEND_METHOD_PATH = f"/{SERVICE}/{SEND_METHOD}"

# Ray's defaults (src/ray/common/ray_config_def.h): the GCS checks a node's raylet every
# period, gives each check its timeout, and declares the node dead after `threshold`
# failures in a row.
RAY_HEALTH_CHECK_DEFAULTS = {
    "RAY_health_check_period_ms": 3000,
    "RAY_health_check_timeout_ms": 10000,
    "RAY_health_check_failure_threshold": 5,
}
# A ping every second: a stream's silence is measured to within a second.
KEEPALIVE_S = 1.0


def silence_s(env: Mapping[str, str] = os.environ) -> float:
    """How long a peer may be silent before its stream is declared broken (seconds).

    ``RAYCG_GRPC_SILENCE_S`` if set; else Ray's node-death window for a silent node,
    from the ``RAY_health_check_*`` variables Ray reads (its defaults otherwise): a
    check a period after the last sign of life, each failing after its timeout, the
    next a period later, ``failure_threshold`` of them; plus one period of margin, for
    the GCS's own lag: ``threshold * (timeout + period) + period`` (68 s by Ray's
    defaults, 11 s with deploy/compose.chaos.yaml's).

    Raises:
        ValueError: one of these variables is not a positive number; naming it.
    """
    own = env.get("RAYCG_GRPC_SILENCE_S")
    if own is not None:
        return _positive("RAYCG_GRPC_SILENCE_S", own)
    period, timeout, threshold = (
        _positive(k, env.get(k, str(d))) for k, d in RAY_HEALTH_CHECK_DEFAULTS.items()
    )
    return (threshold * (timeout + period) + period) / 1000.0


def _positive(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{name}={text!r}: expected a positive number")
    return value


# Read once per process, as Ray reads its configuration.
SILENCE_S = silence_s()

# How long a writer waits for the first connection to its receiver.
CONNECT_TIMEOUT_S = 10.0
# How long a receiver waits for the ring a stream names to be registered (the stream
# may arrive before the node finished its setup).
REGISTER_TIMEOUT_S = 10.0
# How long a writer's close waits for its receivers to close their rings, so that once
# close returns no reader takes a value any more (as with the ring's own close).
CLOSE_TIMEOUT_S = 1.0
# Every wait of our own threads is sliced by this, so that a close is seen soon.
POLL_S = 0.1
MAX_MESSAGE_BYTES = 8 << 20


def _ms(seconds: float) -> int:
    """``seconds`` as gRPC's integer milliseconds: at least 1 (0 would not be a window),
    at most what its C int holds (~24.8 days: an endless window, ``inf`` or a Ray
    configured never to declare a node dead, is as good as that)."""
    return int(min(max(seconds * 1000, 1), 2**31 - 1))


_KEEPALIVE = [
    ("grpc.keepalive_time_ms", _ms(KEEPALIVE_S)),
    ("grpc.keepalive_timeout_ms", _ms(SILENCE_S)),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.ping_timeout_ms", _ms(SILENCE_S)),
]
_LIMITS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]

CLIENT_OPTIONS = [
    *_KEEPALIVE,
    *_LIMITS,
    # A stream is a long-lived call: no retries (a retried stream would replay values),
    # and every stream gets its own connection (no head-of-line blocking between edges).
    ("grpc.enable_retries", 0),
    ("grpc.use_local_subchannel_pool", 1),
    # Straight to the node's address, never through a proxy that http_proxy or grpc_proxy
    # may name (gRPC honors them by default; Ray turns them off for its own channels, too).
    ("grpc.enable_http_proxy", 0),
]
SERVER_OPTIONS = [
    *_KEEPALIVE,
    *_LIMITS,
    # Accept the clients' pings as often as they send them (the default would answer a
    # ping every second with GOAWAY "too many pings").
    ("grpc.http2.min_recv_ping_interval_without_data_ms", int(KEEPALIVE_S * 500)),
    ("grpc.http2.max_ping_strikes", 0),
    # One server per port: without this, a second server on a port in use would share it.
    ("grpc.so_reuseport", 0),
]
