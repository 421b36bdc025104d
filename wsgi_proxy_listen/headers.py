"""
Headers
=======

The rule for headers that end at the hop they travel, shared by the check of
listener responses and by the hop between processes.
"""

from __future__ import annotations

__all__ = ["is_hop_by_hop", "is_hop_by_hop_key", "is_origin_wide"]

# RFC 9110 §7.6.1's list, with RFC 2616's "trailers" that servers (wsgiref, waitress)
# refuse from an application, and the Proxy-* ones.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "trailers", "upgrade"}
)
# Headers whose effect reaches the whole origin, not the path that sent them: a listener
# must not clear the host's cookies and storage, widen a service worker's scope, or set
# the host's transport policies.
_ORIGIN_WIDE = frozenset(
    {
        "clear-site-data",
        "service-worker-allowed",
        "strict-transport-security",
        "alt-svc",
        "public-key-pins",
        "public-key-pins-report-only",
        "expect-ct",
    }
)
_HOP_BY_HOP_KEYS = frozenset("HTTP_" + name.upper().replace("-", "_") for name in _HOP_BY_HOP)


def is_hop_by_hop(name: str) -> bool:
    """Whether a header ends at the hop it travels (RFC 9110 §7.6.1, and ``Proxy-*``)."""
    lowered = name.lower()
    return lowered in _HOP_BY_HOP or lowered.startswith("proxy-")


def is_origin_wide(name: str) -> bool:
    """Whether a response header acts on the whole origin (``Clear-Site-Data``,
    ``Service-Worker-Allowed``, ``Strict-Transport-Security``...)."""
    return name.lower() in _ORIGIN_WIDE


def is_hop_by_hop_key(key: str) -> bool:
    """:func:`is_hop_by_hop` for the environ key of a request header, ``HTTP_TE``."""
    return key in _HOP_BY_HOP_KEYS or key.startswith("HTTP_PROXY_")
