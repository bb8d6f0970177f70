"""Who is asking: the (ip, context) bucket key, from headers and the TCP peer. Pure rules.

Context comes from `X-Hero-Context` (set by the Hero proxy); the ip is the peer, or — only when the
peer is a trusted proxy — the right-most untrusted address of `X-Forwarded-For`, else `X-Real-IP`.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from collections.abc import Sequence

from msgspec import Struct

CONTEXT_HEADER = "x-hero-context"
USER_HEADER = "x-hero-user"
_CONTEXT_RULE = re.compile(r"[A-Za-z0-9_-]{1,64}")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class IdentityError(Struct, frozen=True):
    """A request we cannot attribute; `code` is an outcome code of the HTTP seam."""

    code: str
    message: str


def context_of(value: str | None, default: str, allowed: frozenset[str] | None = None) -> str | IdentityError:
    if value is None:
        return default
    if not _CONTEXT_RULE.fullmatch(value):
        shown = value.encode("latin-1", "replace").decode("utf-8", "replace")  # HTTP headers arrive as latin-1
        shown = shown if len(shown) <= 40 else shown[:40] + "…"
        return IdentityError(
            "invalid_context",
            f"header X-Hero-Context {shown!r} is invalid: it must match [A-Za-z0-9_-]{{1,64}}",
        )
    if allowed is not None and value not in allowed:
        return IdentityError("unknown_context", f"X-Hero-Context {value!r} is not a known context")
    return value


def user_of(value: str | None) -> str | None:
    """`X-Hero-User`, kept only when it is printable and short (it lands in events)."""
    if value is None or not value.isprintable() or len(value) > 128:
        return None
    return value


def parse_networks(cidrs: Sequence[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip())


@lru_cache(maxsize=8192)
def _parse(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = addr.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]" or "[2001:db8::1]:443"
        text = text[1:text.index("]")]
    elif text.count(":") == 1 and "." in text:  # "1.2.3.4:5678"
        text = text.rsplit(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@lru_cache(maxsize=8192)
def _trusted(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: tuple[Network, ...]) -> bool:
    return any(ip.version == n.version and ip in n for n in nets)


@lru_cache(maxsize=8192)  # str() of an address is slow Python; a busy broker sees few addresses
def _bucket(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, v6_prefix: int | None) -> str:
    if isinstance(ip, ipaddress.IPv6Address) and v6_prefix:
        return str(ipaddress.IPv6Network((ip, v6_prefix), strict=False).network_address) + f"/{v6_prefix}"
    return str(ip)


def client_ip(peer: str | None, forwarded_for: str | None, real_ip: str | None, *,
              trusted: tuple[Network, ...] = (), via_unix_socket: bool = False,
              v6_prefix: int | None = None) -> str:
    """The bucket's ip. Forwarding headers count only from a trusted peer (or a Unix socket)."""
    peer_ip = None if peer is None else _parse(peer)
    if via_unix_socket or (peer_ip is not None and _trusted(peer_ip, trusted)):
        for hop in reversed((forwarded_for or "").split(",")):
            if not hop.strip():
                continue
            hop_ip = _parse(hop)
            if hop_ip is None:  # the right-most untrusted hop is garbage: trust nothing left of it
                break
            if not _trusted(hop_ip, trusted):
                return _bucket(hop_ip, v6_prefix)
        real = None if real_ip is None else _parse(real_ip)
        if real is not None:
            return _bucket(real, v6_prefix)
    if peer_ip is None:
        return "unix" if via_unix_socket else "unknown"
    return _bucket(peer_ip, v6_prefix)
