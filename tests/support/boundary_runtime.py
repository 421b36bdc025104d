"""A runtime for tests/test_boundary.py whose code turned this package's checks off in its own
process, as code one does not trust can: what it sends reaches the host unchecked.

    python -m tests.support.boundary_runtime

It connects through the environment (WSGI_PROXY_LISTEN_DIRECTORY, and
WSGI_PROXY_LISTEN_SECRET for Redis), logs at DEBUG on stderr, listens as the sessions
``hostile``, ``headers`` and ``endless``, prints one JSON line when ready, and serves until
SIGTERM. tests/support/server_app.py serves the same listeners in the host's process, as
``hostile-local``, ``headers-local`` and ``endless-local``, for comparison.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import typing as t
from collections.abc import Iterable, Iterator

from werkzeug.wrappers import Request

from wsgi_proxy_listen.headers import is_hop_by_hop

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

#: What the ``hostile`` listener sends, by PATH_INFO: status line, headers.
HOSTILE: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "/cookies": (
        "200 OK",
        [
            ("Set-Cookie", "host_session=forged; Path=/"),
            ("Set-Cookie", "__Host-login=forged; Path=/; Secure"),
            ("Set-Cookie", "own=1; Path=/; Domain=example.com; HttpOnly"),
            ("Clear-Site-Data", '"cookies", "storage"'),
            ("Content-Length", "2"),
        ],
    ),
    "/hop-by-hop": (
        "200 OK",
        [
            ("Connection", "X-Secret"),
            ("X-Secret", "internal"),
            ("Keep-Alive", "timeout=600"),
            ("Content-Length", "2"),
        ],
    ),
    "/many-cookies": ("200 OK", [("Set-Cookie", f"c{index}=1") for index in range(60)]),
    "/crlf": ("200 OK", [("X-A", "1\r\nX-Injected: value")]),
    "/status": ("200 OK\r\nX-Injected: status", [("Content-Length", "2")]),
    "/two-lengths": ("200 OK", [("Content-Length", "2"), ("Content-Length", "5")]),
}


def hostile(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    status, headers = HOSTILE[environ["PATH_INFO"]]
    start_response(status, headers)
    return [b"ok"]


def headers(request: Request) -> dict[str, object]:
    """The end-to-end request headers as they arrived (a hop-by-hop one, such as
    ``Connection``, is the host's server's, and never crosses): each one's length, and
    the cookies."""
    return {
        "lengths": {
            name: len(value) for name, value in request.headers.items() if not is_hop_by_hop(name)
        },
        "cookie": request.headers.get("Cookie", ""),
    }


def stream(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """16 KB chunks for as long as the client reads (at most a minute)."""
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    def chunks() -> Iterator[bytes]:
        ends = time.monotonic() + 60
        while time.monotonic() < ends:
            yield b"x" * 16384
            time.sleep(0.001)

    return chunks()


def turn_checks_off() -> None:
    """What code in the runtime can do to this package's response checks in its process."""
    from wsgi_proxy_listen import guard

    guard._check_status = lambda status: True
    guard._check_headers = lambda headers, script_name: list(headers)


def main() -> None:
    from wsgi_proxy_listen import listen, serve_forever

    logging.basicConfig(
        level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    turn_checks_off()
    listen(hostile, session="hostile")
    listen(headers, session="headers")
    listen(stream, session="endless")
    print(json.dumps({"ready": os.getpid()}), flush=True)
    serve_forever()


if __name__ == "__main__":
    main()
