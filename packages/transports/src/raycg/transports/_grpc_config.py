"""How raycg's gRPC streams are set up: the method, keepalives, limits.

Liveness comes from HTTP/2 keepalive pings, answered by gRPC's own threads whatever
the application does: a peer whose node vanished (no TCP reset ever comes) stops
answering, and the connection fails after ``KEEPALIVE_S + KEEPALIVE_TIMEOUT_S``. A peer
process that dies has its sockets reset by the kernel, which fails the stream at once.
Neither costs anything per value. An application-level stall (a peer alive but slow)
keeps answering pings: it is a timeout, not a failure, and the stream recovers.
"""

from __future__ import annotations

SERVICE = "raycg.Stream"
METHOD = "Open"
METHOD_PATH = f"/{SERVICE}/{METHOD}"

KEEPALIVE_S = 1.0
KEEPALIVE_TIMEOUT_S = 2.0
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

_KEEPALIVE = [
    ("grpc.keepalive_time_ms", int(KEEPALIVE_S * 1000)),
    ("grpc.keepalive_timeout_ms", int(KEEPALIVE_TIMEOUT_S * 1000)),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.ping_timeout_ms", int(KEEPALIVE_TIMEOUT_S * 1000)),
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
