"""
Headers
=======

The rule for headers that end at the hop they travel, shared by the check of
listener responses and by the hop between processes.
"""

from __future__ import annotations

__all__ = ["is_hop_by_hop"]

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
)


def is_hop_by_hop(name: str) -> bool:
    """Whether a header ends at the hop it travels (RFC 9110 §7.6.1, and ``Proxy-*``)."""
    lowered = name.lower()
    return lowered in _HOP_BY_HOP or lowered.startswith("proxy-")
