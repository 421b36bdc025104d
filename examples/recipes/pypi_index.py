"""pypiserver as a listener: a package index that ``pip`` installs from, through the
host.

The gotcha: pip needs the index's own URL, with the listener's prefix and a trailing
slash: ``pip install --index-url http://HOST/proxy/sessions/pypi/simple/ NAME``.
pypiserver builds its links from ``SCRIPT_NAME``, so they stay under the prefix.
Packages are the wheels and sdists in ``PYPI_PACKAGES`` (a folder; an empty temporary
one when it is not set).
"""

from __future__ import annotations

import os
import tempfile

import pypiserver
from flask import Flask

from wsgi_proxy_listen import listen, url

from ._host import host, serve

SESSION = "pypi"


def create_app(packages: str | None = None) -> Flask:
    packages = packages or os.environ.get("PYPI_PACKAGES") or tempfile.mkdtemp()
    app = host("Package index", url(session=SESSION, path="/simple/"))
    listen(pypiserver.app(roots=[packages]), session=SESSION)
    return app


if __name__ == "__main__":
    serve(create_app())
