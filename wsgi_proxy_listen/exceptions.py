"""
Exceptions
==========

Each class also subclasses the built-in exception it behaves like, so code
that catches the built-in keeps working.
"""

from __future__ import annotations

__all__ = ["DirectoryUnavailable", "InvalidResponse"]


class InvalidResponse(ValueError):
    """A listener passed an invalid status line or header to ``start_response``.

    Raised inside the listener by the ``start_response`` that the middleware
    hands it (PEP 3333 lets ``start_response`` raise for such input); the
    client gets a plain 500 whatever the listener does with it.
    """


class DirectoryUnavailable(ConnectionError):
    """The shared directory cannot be reached (Redis down, the folder's database locked).

    Requests for listeners of other processes get 503 while it lasts; listeners
    of this process keep answering. Its ``__cause__`` is what the store raised,
    where it raised something (not while the directory is known to be down).
    """
