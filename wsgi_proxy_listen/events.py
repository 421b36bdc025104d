"""
Events
======

Every change of state is one record on the ``wsgi_proxy_listen`` logger, with a
stable event name and its fields in the record's ``extra``: a formatter or a
log pipeline reads ``record.event``, ``record.session``... rather than parsing
the message, which may change.

=====================  =======  =============================================================
event                  level    when (fields besides ``event`` and ``pid``)
=====================  =======  =============================================================
``listen``             DEBUG    a listener registered (``session``, ``app``)
``close``              DEBUG    a listener removed (``session``, ``app``)
``publish``            DEBUG    a listener written to the directory (``session``, ``owner``)
``withdraw``           DEBUG    a listener taken out of it (``session``, ``owner``)
``take_over``          INFO     another process took a session over (``session``)
``owner_gone``         WARNING  a listener's process is gone: its entries removed (``session``,
                                ``address``, ``reason``)
``owner_unreached``    WARNING  a listener's process could not be reached or did not answer
                                (``session``, ``address``, ``reason``: refused, timeout,
                                closed)
``answer_cut``         WARNING  its process ended the connection mid-answer (``session``,
                                ``address``, ``reason``)
``directory_down``     ERROR    the directory cannot be reached (``reason``)
``directory_up``       WARNING  it is reachable again
``start``              INFO     an app's start registered a member (``app``, ``session``)
``idle_shutdown``      INFO     an idle member was stopped (``app``, ``session``)
``hop_refused``        WARNING  the internal endpoint refused a connection (``reason``)
``client_gone``        DEBUG    a client went away mid-request (``session``)
=====================  =======  =============================================================

``pid`` is the process's id; a field that does not apply is left out.
"""

from __future__ import annotations

import logging
import os

from . import metrics

__all__ = ["EVENTS", "say"]

logger = logging.getLogger("wsgi_proxy_listen")

#: Every event name, with its level.
EVENTS = {
    "listen": logging.DEBUG,  # as many as the sessions: below what a server shows
    "close": logging.DEBUG,
    "publish": logging.DEBUG,
    "withdraw": logging.DEBUG,
    "take_over": logging.INFO,
    "owner_gone": logging.WARNING,
    "owner_unreached": logging.WARNING,
    "answer_cut": logging.WARNING,
    "directory_down": logging.ERROR,
    "directory_up": logging.WARNING,
    "start": logging.INFO,
    "idle_shutdown": logging.INFO,
    "hop_refused": logging.WARNING,
    "client_gone": logging.DEBUG,
}


def say(event: str, message: str, *args: object, **fields: object) -> None:
    """Log ``event`` at its level: ``message % args``, with ``fields`` (and ``event``,
    ``pid``) in the record, and count it where a metric does (:mod:`.metrics`). Costs
    one level check when the level is off."""
    if metrics.ENABLED and event in _MEASURED:
        _measure(event, fields)
    level = EVENTS[event]
    if logger.isEnabledFor(level):
        extra = {"event": event, "pid": os.getpid(), **fields}
        logger.log(level, message, *args, extra=extra, stacklevel=2)


_MEASURED = frozenset(
    {"start", "idle_shutdown", "owner_gone", "owner_unreached", "directory_down", "directory_up"}
)


def _measure(event: str, fields: dict[str, object]) -> None:
    if event == "start":
        metrics.app_started()
    elif event == "idle_shutdown":
        metrics.idle_shutdown()
    elif event in ("owner_gone", "owner_unreached"):
        metrics.owner_failure("gone" if event == "owner_gone" else str(fields["reason"]))
    elif event in ("directory_down", "directory_up"):
        metrics.directory_up(event == "directory_up")
