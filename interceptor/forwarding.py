"""Who the client is, and the X-Forwarded-* headers the edge sets for it.

Client-sent `X-Forwarded-For/-Proto/-Host` are believed only when the connection comes from a trusted proxy
(`TIFFIN_TRUSTED_PROXIES`); from anyone else they are replaced, so a client cannot pose as another address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from interceptor.config import Network

FORWARDED_FOR = "x-forwarded-for"
FORWARDED_PROTO = "x-forwarded-proto"
FORWARDED_HOST = "x-forwarded-host"


def is_trusted(address: str | None, trusted: Sequence[Network]) -> bool:
    """Whether `address` (an IP, possibly IPv4-mapped IPv6) lies in one of the trusted networks."""
    if not address or not trusted:
        return False
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in trusted)


@dataclass(frozen=True)
class Forwarding:
    """The client as the edge sees it, after trusted proxies, and the headers to pass on about it."""

    client: str
    """The client's address: the peer, or the first untrusted hop of X-Forwarded-For behind trusted proxies."""
    headers: dict[str, str]
    """x-forwarded-for, x-forwarded-proto and x-forwarded-host, as set by this edge."""


def forwarding(
    peer: str | None, scheme: str, host: str, headers: Mapping[str, str], trusted: Sequence[Network]
) -> Forwarding:
    """Work out the client address and X-Forwarded-* for a request from `peer` over `scheme` for `host`."""
    peer = peer or "-"
    if not is_trusted(peer, trusted):
        return Forwarding(peer, {FORWARDED_FOR: peer, FORWARDED_PROTO: scheme, FORWARDED_HOST: host})
    chain = [hop.strip() for hop in headers.get(FORWARDED_FOR, "").split(",") if hop.strip()]
    # Walk from the nearest hop back: each trusted proxy vouches for the hop before it, nobody for the rest.
    client = peer
    for hop in reversed(chain):
        if not is_trusted(client, trusted):
            break
        client = hop
    return Forwarding(
        client,
        {
            FORWARDED_FOR: ", ".join([*chain, peer]),
            FORWARDED_PROTO: _token(headers.get(FORWARDED_PROTO), scheme),
            FORWARDED_HOST: _token(headers.get(FORWARDED_HOST), host),
        },
    )


def _token(value: str | None, default: str) -> str:
    """A trusted proxy's single value (the first of a list), or ours when it sent none."""
    if not value:
        return default
    return value.split(",")[0].strip() or default
