"""
Exceptions
==========

Each class also subclasses the built-in exception it behaves like, so code
that catches the built-in keeps working.
"""

from __future__ import annotations

__all__ = ["InvalidResponse"]


class InvalidResponse(ValueError):
    """A listener passed an invalid status line or header to ``start_response``.

    Raised inside the listener by the ``start_response`` that the middleware
    hands it (PEP 3333 lets ``start_response`` raise for such input); the
    client gets a plain 500 whatever the listener does with it.
    """
