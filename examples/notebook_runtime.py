"""A notebook runtime: the process where a notebook's code runs (a Jupyter kernel, a job
worker), apart from the host's web workers. The platform starts it with the host's
directory in its environment, so the notebook's code only listens:

    WSGI_PROXY_LISTEN_DIRECTORY=$XDG_RUNTIME_DIR/myhost-proxy python -m examples.notebook_runtime

Its listener then answers at ``/proxy/sessions/notebook/`` on every worker of the host
(``make demo`` runs one beside the demo host). In a Jupyter kernel, the cell that calls
``listen()`` shows a link to it.
"""

from __future__ import annotations

import os

from werkzeug.wrappers import Request

from wsgi_proxy_listen import Listener, listen, serve_forever


def notebook(request: Request) -> dict[str, object]:
    return {"answered by": "the notebook runtime", "pid": os.getpid(), "path": request.path}


def main() -> Listener:
    return listen(notebook, session="notebook")


if __name__ == "__main__":
    handle = main()
    print(f"listening at {handle.url('/')} in process {os.getpid()}", flush=True)
    serve_forever()  # until SIGTERM or SIGINT; the listener is withdrawn then
