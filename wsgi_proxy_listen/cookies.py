"""
Cookies
=======

A listener lives on the host's origin, so its cookies and the host's share one
jar in the browser. Two rules keep them apart:

- :func:`confine` rewrites what a listener sets: a cookie can only reach the
  listener's own path. A ``Path`` outside the listener's ``SCRIPT_NAME``, or
  none (a browser's default path may be the parent of every session, as on the
  bare ``{prefix}/sessions/<id>`` form), or one longer than the 1024 bytes a
  browser reads, becomes that ``SCRIPT_NAME``; a ``Domain`` is dropped; a
  ``__Host-`` cookie, which by definition belongs to the whole origin, is
  dropped. A listener can then never overwrite the host's login.
- :func:`withhold` removes named host cookies from what a listener receives
  (``ProxyMiddleware(forward_cookies=[...])``). A name that the request carries
  more than once is the host's cookie and the listener's own of that name: a
  browser sends the cookies of longer paths first (RFC 6265 §5.4), and a
  listener's are confined to its own path, longer than the host's, so only the
  last one is withheld.

A listener may set at most :data:`MAX_PER_ANSWER` cookies in one answer (the
guard drops the rest, and says so), so that one page cannot fill the
browser's jar for the origin and evict the host's login.

Both work on the ``;``-separated segments of the header only: names and
values are passed on byte for byte, nothing is decoded or re-quoted.
"""

from __future__ import annotations

from collections.abc import Collection

__all__ = ["MAX_PER_ANSWER", "RESERVED", "confine", "drop", "withhold"]


#: Browsers ignore an attribute value longer than this (RFC 6265bis §5.6), which
#: would leave a Path to the browser's default.
MAX_ATTRIBUTE = 1024
#: The cookies one answer of a listener may set: browsers keep about 180 per site
#: (Chromium), and evict the least recently used beyond.
MAX_PER_ANSWER = 20
#: Names a listener may not set: the login cookie of listener origins
#: (:mod:`wsgi_proxy_listen.origins`), which only the middleware sets.
RESERVED = frozenset({"wpl-user"})


def confine(set_cookie: str, path: str) -> str | None:
    """``set_cookie`` rewritten so that it reaches only ``path`` and below; ``None``
    when it must be dropped (a ``__Host-`` cookie).

    :param path: the listener's public path (its ``SCRIPT_NAME``, URL-encoded).
    """
    name_value, *attributes = set_cookie.split(";")
    name = name_value.partition("=")[0].strip()
    if name.lower().startswith("__host-") or name in RESERVED:
        return None
    kept = []
    given = None
    for attribute in attributes:
        key, _, value = attribute.partition("=")
        key = key.strip().lower()
        if key == "path":
            given = value.strip()  # the last Path attribute is the one a browser uses
        elif key != "domain":
            kept.append(attribute)
    if given is None or len(given) > MAX_ATTRIBUTE or not _within(given, path):
        given = path
    return ";".join([name_value, *kept, f" Path={given}"])


def _within(cookie_path: str, path: str) -> bool:
    return cookie_path == path or cookie_path.startswith(path.rstrip("/") + "/")


def drop(cookie: str, names: Collection[str]) -> str:
    """The ``Cookie`` header without any cookie called one of ``names``."""
    pairs = (segment.strip() for segment in cookie.split(";"))
    return "; ".join(pair for pair in pairs if pair and pair.partition("=")[0].strip() not in names)


def withhold(cookie: str, names: frozenset[str]) -> str:
    """The ``Cookie`` header without the cookies called one of ``names``; of a name
    that appears more than once, only the last (the host's) is withheld."""
    pairs = [pair for pair in (segment.strip() for segment in cookie.split(";")) if pair]
    last: dict[str, int] = {}
    for index, pair in enumerate(pairs):
        name = pair.partition("=")[0].strip()
        if name in names:
            last[name] = index
    if not last:
        return "; ".join(pairs)
    withheld = set(last.values())
    return "; ".join(pair for index, pair in enumerate(pairs) if index not in withheld)
