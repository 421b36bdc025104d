"""
Headers
=======

The rule for headers that end at the hop they travel, shared by the check of
listener responses and by the hop between processes.
"""

from __future__ import annotations

__all__ = ["is_hop_by_hop", "is_hop_by_hop_key"]

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
)
_HOP_BY_HOP_KEYS = frozenset("HTTP_" + name.upper().replace("-", "_") for name in _HOP_BY_HOP)


def is_hop_by_hop(name: str) -> bool:
    """Whether a header ends at the hop it travels (RFC 9110 §7.6.1, and ``Proxy-*``)."""
    lowered = name.lower()
    return lowered in _HOP_BY_HOP or lowered.startswith("proxy-")


def is_hop_by_hop_key(key: str) -> bool:
    """:func:`is_hop_by_hop` for the environ key of a request header, ``HTTP_TE``."""
    return key in _HOP_BY_HOP_KEYS or key.startswith("HTTP_PROXY_")
