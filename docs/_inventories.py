"""The objects of other projects that these docs refer to, and where each is documented:
written as Sphinx inventories (``objects.inv``) when the docs are built, so that
intersphinx links them without the network. A reference to anything not listed here
fails ``make docs`` (nitpicky), which is how this list stays complete."""

from __future__ import annotations

import os
import zlib

#: name -> (domain:role, path from the project's base URL)
PROJECTS: dict[str, dict[str, tuple[str, str]]] = {
    "python": {
        "time.monotonic": ("py:function", "library/time.html#time.monotonic"),
        "time.time": ("py:function", "library/time.html#time.time"),
        "abc.ABC": ("py:class", "library/abc.html#abc.ABC"),
        "collections.abc.Iterator": (
            "py:class",
            "library/collections.abc.html#collections.abc.Iterator",
        ),
        "contextlib.AbstractContextManager": (
            "py:class",
            "library/contextlib.html#contextlib.AbstractContextManager",
        ),
        "contextvars.ContextVar": ("py:class", "library/contextvars.html#contextvars.ContextVar"),
        "atexit": ("py:module", "library/atexit.html#module-atexit"),
        "typing.NamedTuple": ("py:class", "library/typing.html#typing.NamedTuple"),
        "ssl.SSLContext": ("py:class", "library/ssl.html#ssl.SSLContext"),
        "typing.Protocol": ("py:class", "library/typing.html#typing.Protocol"),
        "ValueError": ("py:exception", "library/exceptions.html#ValueError"),
        "TypeError": ("py:exception", "library/exceptions.html#TypeError"),
        "RuntimeError": ("py:exception", "library/exceptions.html#RuntimeError"),
        "LookupError": ("py:exception", "library/exceptions.html#LookupError"),
    },
    "werkzeug": {
        "werkzeug.wrappers.Request": ("py:class", "wrappers/#werkzeug.wrappers.Request"),
        "werkzeug.wrappers.Response": ("py:class", "wrappers/#werkzeug.wrappers.Response"),
        "werkzeug.wrappers.Request.application": (
            "py:method",
            "wrappers/#werkzeug.wrappers.Request.application",
        ),
        "werkzeug.wrappers.Response.force_type": (
            "py:method",
            "wrappers/#werkzeug.wrappers.Response.force_type",
        ),
        "werkzeug.exceptions.RequestEntityTooLarge": (
            "py:exception",
            "exceptions/#werkzeug.exceptions.RequestEntityTooLarge",
        ),
        "werkzeug.exceptions.HTTPException": (
            "py:exception",
            "exceptions/#werkzeug.exceptions.HTTPException",
        ),
    },
    "flask": {
        "flask.Flask": ("py:class", "api/#flask.Flask"),
        "flask.app.Flask": ("py:class", "api/#flask.Flask"),
    },
    "django": {
        "django.core.wsgi.get_wsgi_application": (
            "py:function",
            "howto/deployment/wsgi/#django.core.wsgi.get_wsgi_application",
        ),
        "django.core.exceptions.ImproperlyConfigured": (
            "py:exception",
            "ref/exceptions/#django.core.exceptions.ImproperlyConfigured",
        ),
        "django.core.checks.CheckMessage": (
            "py:class",
            "ref/checks/#django.core.checks.CheckMessage",
        ),
        "django.core.checks.messages.CheckMessage": (
            "py:class",
            "ref/checks/#django.core.checks.CheckMessage",
        ),
    },
    "webob": {
        "webob.dec.wsgify": ("py:class", "api/dec.html#webob.dec.wsgify"),
        "webob.Request": ("py:class", "api/request.html#webob.request.Request"),
    },
}


def write(folder: str) -> dict[str, str]:
    """Write one inventory per project into ``folder``; their paths, by project."""
    os.makedirs(folder, exist_ok=True)
    written = {}
    for project, objects in PROJECTS.items():
        lines = "".join(
            f"{name} {role} 1 {path} -\n" for name, (role, path) in sorted(objects.items())
        )
        header = (
            "# Sphinx inventory version 2\n"
            f"# Project: {project}\n"
            "# Version: stable\n"
            "# The remainder of this file is compressed using zlib.\n"
        )
        path = os.path.join(folder, f"{project}.inv")
        with open(path, "wb") as inventory:
            inventory.write(header.encode() + zlib.compress(lines.encode()))
        written[project] = path
    return written
