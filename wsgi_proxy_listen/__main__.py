"""``python -m wsgi_proxy_listen``: the operator's command line (:mod:`.cli`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m wsgi_proxy_listen"))
