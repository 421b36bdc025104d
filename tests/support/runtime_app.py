"""A runtime for tests/test_runtimes.py: a plain Python process, configured only through
the environment (WSGI_PROXY_LISTEN_DIRECTORY, and WSGI_PROXY_LISTEN_SECRET for Redis).

    python -m tests.support.runtime_app SESSION MODE

    serve-forever   serve_forever()
    sleep           sleeps; SIGTERM ends it all the same
    fork            forks a child that listens too
    churn           listens and closes in a loop
    stubborn        a loop that catches BaseException
    thread          listens from another thread
    app-handler     its own SIGTERM handler, then serve_forever()
    app-member      a member of the app "notebook-app" with idle_timeout=TEST_IDLE_TIMEOUT,
                    ends when its stop() is called
    alice-only      a listener with access={"alice"}, then serve_forever()

``?sleep=SECONDS`` makes the listener take that long to answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sys
import threading
import time
import typing as t

from werkzeug.wrappers import Request

from wsgi_proxy_listen import listen, register_app, serve_forever


def echo(request: Request) -> dict[str, object]:
    time.sleep(float(request.args.get("sleep", 0)))
    body = request.get_data()
    return {
        "pid": os.getpid(),
        "script_name": request.environ["SCRIPT_NAME"],
        "path_info": request.environ["PATH_INFO"],
        "query": request.environ["QUERY_STRING"],
        "remote_user": request.remote_user,
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }


def endless(environ: dict[str, object], start_response: t.Any) -> t.Iterator[bytes]:
    """A stream that never ends (until its process does)."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    while True:
        yield b"tick\n" * 100
        time.sleep(0.05)


def say(**what: object) -> None:
    print(json.dumps(what), flush=True)


def main(session: str, mode: str) -> None:
    stopped = threading.Event()
    if mode == "thread":
        worker = threading.Thread(target=listen, args=(echo,), kwargs={"session": session})
        worker.start()
        worker.join()
    elif mode == "app-member":
        register_app(
            "notebook-app",
            idle_timeout=float(os.environ["TEST_IDLE_TIMEOUT"]),
            stop=lambda session: stopped.set(),
        )
        listen(echo, session=session, app="notebook-app")
    elif mode == "alice-only":
        listen(echo, session=session, access={"alice"})
    elif mode == "stream":
        listen(endless, session=session)
    else:
        listen(echo, session=session)
    if mode == "fork":
        child = os.fork()
        if child == 0:
            listen(echo, session=f"{session}-child")
            say(child=os.getpid())
            serve_forever()
            os._exit(0)
    if mode == "app-handler":

        def handler(signum: int, frame: object) -> None:
            say(handled=signum)

        def announce() -> None:
            # Ready once serve_forever() has put its own handler in place.
            while signal.getsignal(signal.SIGTERM) is handler:
                time.sleep(0.01)
            say(ready=os.getpid())

        signal.signal(signal.SIGTERM, handler)
        threading.Thread(target=announce).start()
    else:
        say(ready=os.getpid())
    if mode == "app-member":
        stopped.wait()
        return  # its listener is closed once stop() returns, and withdrawn at exit anyway
    if mode in ("sleep", "thread"):
        while True:
            time.sleep(1)
    if mode == "churn":
        while True:
            listen(echo, session=f"{session}-churn").close()
    if mode == "stubborn":
        while True:
            with contextlib.suppress(BaseException):  # what a job loop may do
                time.sleep(0.01)
    serve_forever()
    if mode == "app-handler":
        say(returned=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
