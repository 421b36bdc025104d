"""
Terms
=====

What a listener declares of how the host serves it, besides its handler:

- ``access``: who may reach it (:mod:`wsgi_proxy_listen.access`);
- ``sandbox``: whether its answers carry :data:`SANDBOX_POLICY`, so that its
  pages run with an origin of their own that nothing shares (an *opaque*
  origin): their scripts cannot read the host's pages with the user's cookies,
  nor read or write ``document.cookie``.

A listener, an app and the middleware each may declare them; ``None`` leaves
a term to the next: a listener's to its app's, an app's to the middleware's.
The terms are published with each listener in a directory, so the process that
receives a request applies them to a listener of another process as to its own.
"""

from __future__ import annotations

import typing as t

from .access import Access, access_from_record, access_to_record, check_access

__all__ = ["SANDBOX_POLICY", "UNDECLARED", "Terms", "check_sandbox"]

#: The ``Content-Security-Policy`` a sandboxed listener's answers carry, besides any
#: of its own (a second policy only narrows the first). Scripts, forms, popups,
#: dialogs and downloads work; the page's origin is opaque.
SANDBOX_POLICY = "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads"


def check_sandbox(sandbox: object, *, name: str = "sandbox") -> bool | None:
    """``sandbox`` if it is ``True``, ``False`` or ``None``.

    :raises TypeError: anything else.
    """
    if sandbox is not None and not isinstance(sandbox, bool):
        raise TypeError(f"{name} must be True, False or None, not {sandbox!r}")
    return sandbox


class Terms(t.NamedTuple):
    """The terms a listener (or an app, or a middleware) declares; ``None`` leaves one
    to the next in line."""

    access: Access | None = None
    sandbox: bool | None = None

    def over(self, fallback: Terms) -> Terms:
        """These terms, with those they leave open taken from ``fallback``."""
        return Terms(
            fallback.access if self.access is None else self.access,
            fallback.sandbox if self.sandbox is None else self.sandbox,
        )

    @classmethod
    def checked(cls, access: object, sandbox: object) -> Terms:
        """The terms of ``listen()`` or ``register_app()``'s arguments.

        :raises ValueError, TypeError: see :func:`~wsgi_proxy_listen.access.check_access`
            and :func:`check_sandbox`.
        """
        return cls(check_access(access), check_sandbox(sandbox))

    def to_record(self) -> dict[str, object]:
        """The fields of a directory's record that hold them (JSON)."""
        return {"access": access_to_record(self.access), "sandbox": self.sandbox}

    @classmethod
    def from_record(cls, record: dict[str, t.Any]) -> Terms:
        """What :meth:`to_record` wrote (a field left out is ``None``).

        :raises ValueError: anything else (the entry is not to be trusted).
        """
        sandbox = record.get("sandbox")
        if sandbox is not None and not isinstance(sandbox, bool):
            raise ValueError(f"invalid sandbox {sandbox!r}")
        return cls(access_from_record(record.get("access")), sandbox)


#: The terms of a listener that declares none.
UNDECLARED = Terms()
