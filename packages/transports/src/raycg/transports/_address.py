"""Network addresses as ``host:port`` text, the form gRPC's targets and listen addresses take.

An IPv6 literal must be bracketed there (``[::1]:50051``): unbracketed, gRPC reads its
last group as the port (``::1:0`` is the host ``::0.1.0.0`` on port 443). A node's address
as Ray reports it (``ray.util.get_node_ip_address()``, a raylet's ``NodeManagerAddress``)
is a bare IP, IPv6 on an IPv6-only cluster: every address raycg composes goes through
:func:`join_host_port`. Go's ``net.JoinHostPort``/``SplitHostPort`` are the model; the
stdlib has no such pair (``ipaddress`` parses hosts, not ``host:port``).
"""

from __future__ import annotations


def join_host_port(host: str, port: int | str) -> str:
    """``host:port``, with an IPv6 literal bracketed (``[::1]:50051``).

    An IPv4 address or a host name (neither has a colon) is left as it is, and so is an
    IPv6 literal already in brackets.

    Args:
        host: an IPv4 or IPv6 address (bare or bracketed), or a host name.
        port: the port number.
    """
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def split_host_port(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``host:port`` text; an IPv6 host comes back without brackets.

    Args:
        address: ``host:port``, an IPv6 host in brackets (``[::1]:0``).

    Raises:
        ValueError: ``address`` has no port, or not one in 0..65535, or it is an IPv6
            address without brackets (ambiguous: is its last group the port?); naming it.
    """
    if address.startswith("["):  # [v6]:port
        host, _, rest = address[1:].partition("]")
        sep, port = rest[:1], rest[1:]
    else:
        host, sep, port = address.rpartition(":")
        if ":" in host:
            raise ValueError(f"address {address!r}: an IPv6 address needs brackets, as in '[::1]:0'")
    if sep != ":" or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"address {address!r}: expected host:port, as in '127.0.0.1:0' or '[::1]:0'")
    return host, int(port)


__all__ = ["join_host_port", "split_host_port"]
