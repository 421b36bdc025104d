"""
Forwarding to the owner
=======================

A request for a listener of another process goes to its owner over the hop
(:mod:`.hop`), and the owner's answer streams back. What went wrong is
answered by the one table, :data:`~wsgi_proxy_listen.answers.FAILURE_STATUS`,
and acted on here:

- the owner no longer serves the session, or is gone: a location from the
  cache is looked up again and a request without a body goes once more where
  the store says now; otherwise the caller decides (404, or the next member of
  an app);
- the owner refused the connection (nobody listens there any more): its
  entries are removed from the store, compare-and-delete on the owner;
- the owner was slow, paused or broke the connection: nothing is removed (it
  may be alive; its lease decides), the location is looked up again next time.
"""

from __future__ import annotations

import contextlib
import logging
import typing as t

from ..answers import FAILURE_STATUS, Failure, respond
from ..dispatch import is_bodyless
from ..events import say
from ..exceptions import DirectoryUnavailable

if t.TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from ..seam import Host
    from ..terms import Terms
    from .health import Health
    from .hop import HopClient
    from .locations import Locations
    from .store import Owner

__all__ = ["Forwarder", "Remote"]

logger = logging.getLogger("wsgi_proxy_listen")


class Forwarder:
    """Forwards requests from this process (``owner``, once it serves) to others.

    :param forget: the store's removal of an owner that refused a connection, where that
        proves it gone (whether it removed it).
    """

    def __init__(
        self,
        host: Host,
        client: HopClient,
        health: Health,
        locations: Locations,
        *,
        forget: Callable[[str, Owner], bool],
        current: Callable[[str, str], tuple[str, Owner] | None],
    ) -> None:
        self._host = host
        self._client = client
        self._health = health
        self._locations = locations
        self._forget = forget
        self._current = current
        self.owner = ""

    def find(self, session: str, environ: WSGIEnvironment) -> Remote | None:
        """Where another process serves ``session``, or ``None``.

        :raises DirectoryUnavailable: the store cannot be reached.
        """
        # A request without a body can go again if a cached location is stale; one with
        # a body is sent once, to where the store says now.
        cached = is_bodyless(environ)
        owner = self._locations.locate(session, cached=cached)
        if owner is None or owner.owner == self.owner:
            return None
        return Remote(self, session, owner, cached)

    def forward(
        self,
        session: str,
        owner: Owner,
        cached: bool,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        app_path: bool = False,
    ) -> Iterable[bytes] | None:
        """Forward a request for ``session`` to ``owner``, answering for what went
        wrong; ``None`` when the owner does not serve the session and the store
        names no other. ``app_path``: the request came by its app's generic path, so
        that a GET or HEAD may go to another live member when the owner cannot be
        reached."""
        result = self._client.forward(
            owner.owner, owner.address, session, self._host.prefix, environ, start_response
        )
        if not isinstance(result, Failure):
            return result
        if cached and result in (Failure.MISS, Failure.GONE):
            # The cached location may be stale: ask the store, and go once more.
            self._locations.forget(session)
            try:
                fresh = self._locations.locate(session, cached=False)
            except DirectoryUnavailable:
                return respond(start_response, 503)
            if fresh is not None and fresh.owner != self.owner and fresh != owner:
                return self.forward(session, fresh, False, environ, start_response, app_path)
            if fresh is None and result is Failure.MISS:
                return None
        if result is Failure.MISS:
            self._locations.forget(session)
            return None
        # Look again next time: an owner that fails may have lost the session by now
        # (its lease expired), and the store says nothing when a lease expires.
        self._locations.forget(session)
        if result is Failure.GONE:
            # A refused connection: the store says whether that proves the owner gone (a
            # socket of the folder on one machine, an owner that missed a renewal across
            # machines); a broken or slow one may be a live owner's, whose lease decides.
            forgotten = False
            with contextlib.suppress(DirectoryUnavailable):
                forgotten = self._health.call(self._forget, session, owner)
            where = {"session": session, "address": owner.address, "reason": "refused"}
            if forgotten:
                say(
                    "owner_gone",
                    "the owner of session %r at %s is gone: its entries were removed",
                    session,
                    owner.address,
                    **where,
                )
            else:
                say(
                    "owner_unreached",
                    "the owner of session %r at %s refused the connection from here, but"
                    " renews its lease: its entries stay (a partition or a firewall"
                    " between the two?)",
                    session,
                    owner.address,
                    **where,
                )
        elif result in _SAID:
            what, why = _SAID[result]
            say(
                "owner_unreached",
                f"the owner of session %r at %s {what}",
                session,
                owner.address,
                session=session,
                address=owner.address,
                reason=why,
            )
        if app_path and result in _UNREACHED and environ.get("REQUEST_METHOD") in _SAFE:
            other = self._other_member(owner)
            if other is not None:
                return self.forward(other[0], other[1], False, environ, start_response)
        return respond(start_response, FAILURE_STATUS[result])

    def _other_member(self, unreached: Owner) -> tuple[str, Owner] | None:
        """Another live member of ``unreached``'s app, in another process, on the same
        terms (who may reach it was checked for those): where a request without a body
        on the app's generic path goes instead of a 502. Once: it gets no other."""
        try:
            found = self._health.call(self._current, t.cast(str, unreached.app), unreached.owner)
        except Exception:  # noqa: BLE001 - down, or any error of the store: the 502 stands
            return None
        if found is None or found[1].owner == self.owner or found[1].terms != unreached.terms:
            return None
        return found


# The failures that leave the owner unreached (a 502): no answer of it began. A request
# that may be sent twice (a safe method: GET or HEAD, which carry no body) on an app's
# generic path may go to another member; a closed connection may come after the owner
# ran it, which only a safe request can bear.
_UNREACHED = (Failure.GONE, Failure.UNRESPONSIVE, Failure.BROKEN)
_SAFE = ("GET", "HEAD")
# What the log says of an owner that was reached but did not answer, and the reason.
_SAID = {
    Failure.TIMEOUT: ("did not answer in time", "timeout"),
    Failure.UNRESPONSIVE: ("did not answer in time", "timeout"),
    Failure.BROKEN: ("ended the connection without an answer", "closed"),
}


class Remote:
    """A listener of another process, found in the store: a
    :class:`~wsgi_proxy_listen.seam.Destination`."""

    __slots__ = ("app_path", "cached", "forwarder", "location", "session")

    def __init__(
        self,
        forwarder: Forwarder,
        session: str,
        location: Owner,
        cached: bool,
        app_path: bool = False,
    ) -> None:
        self.forwarder = forwarder
        self.session = session
        self.location = location
        self.cached = cached
        self.app_path = app_path

    @property
    def app(self) -> str | None:
        return self.location.app

    @property
    def owner(self) -> str:
        return self.location.owner

    @property
    def terms(self) -> Terms:
        return self.location.terms

    def serve(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes] | None:
        return self.forwarder.forward(
            self.session, self.location, self.cached, environ, start_response, self.app_path
        )

    def __repr__(self) -> str:
        return f"<Remote session={self.session!r} owner={self.owner!r}>"
