"""A runtime for tests/test_runtimes.py: a plain Python process, configured only through
the environment (WSGI_PROXY_LISTEN_DIRECTORY, and WSGI_PROXY_LISTEN_SECRET for Redis).

    python -m tests.runtime_app SESSION serve-forever   # serve_forever()
    python -m tests.runtime_app SESSION sleep           # sleeps; SIGTERM ends it all the same
    python -m tests.runtime_app SESSION fork            # forks a child that listens too
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

from werkzeug.wrappers import Request

from wsgi_proxy_listen import listen, serve_forever


def echo(request: Request) -> dict[str, object]:
    body = request.get_data()
    return {
        "pid": os.getpid(),
        "script_name": request.environ["SCRIPT_NAME"],
        "path_info": request.environ["PATH_INFO"],
        "query": request.environ["QUERY_STRING"],
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }


def main(session: str, mode: str) -> None:
    listen(echo, session=session)
    if mode == "fork":
        child = os.fork()
        if child == 0:
            listen(echo, session=f"{session}-child")
            print(json.dumps({"child": os.getpid()}), flush=True)
            serve_forever()
            os._exit(0)
    print(json.dumps({"ready": os.getpid()}), flush=True)
    if mode == "sleep":
        while True:
            time.sleep(1)
    serve_forever()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
