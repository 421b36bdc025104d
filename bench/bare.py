"""A listener with no framework, for ``make bench-cluster``: what is left of a request
through it is the hop's (and the host's) own cost."""

from __future__ import annotations

import typing as t

__all__ = ["bare"]


def bare(environ: dict[str, t.Any], start_response: t.Callable[..., t.Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
