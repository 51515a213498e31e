"""The client's IP address, believing ``X-Forwarded-For`` only from trusted proxies.

The chain is every address in ``X-Forwarded-For`` followed by the peer that
connected. Walking it from the right, each trusted proxy vouches for the address
to its left; the first address not trusted is the client. So a client cannot
pick its own rate-limit key by sending the header: without a trusted peer the
header is ignored, and addresses a client wrote to the left of what a trusted
proxy appended are never reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

Network = IPv4Network | IPv6Network


class ClientAddress:
    def __init__(self, trusted_proxies: Sequence[Network]) -> None:
        self.trusted = tuple(trusted_proxies)

    def is_trusted(self, address: IPv4Address | IPv6Address) -> bool:
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted)

    def resolve(self, peer: str, forwarded_for: str | None) -> str:
        """The client address for a connection from ``peer`` with this header value."""
        if not self.trusted or not forwarded_for:
            return peer
        current = peer
        hops = [hop.strip() for hop in forwarded_for.split(",")]
        for hop in reversed(hops):
            try:
                if not self.is_trusted(ip_address(current)):
                    return current
                address = ip_address(hop.removeprefix("[").split("]")[0])
            except ValueError:  # a malformed hop: the last address we could vouch for
                return current
            current = str(address)
        return current
