"""Sphinx configuration of the documentation site (``make docs``)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import wsgi_proxy_listen

project = "wsgi_proxy_listen"
author = "the wsgi_proxy_listen authors"
copyright = "2026, the wsgi_proxy_listen authors"
release = version = wsgi_proxy_listen.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"wsgi_proxy_listen {release}"

# Every reference must resolve (make docs runs with -n -W).
nitpicky = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"members": True}

# The other projects' inventories are written from _inventories.py, so that the build
# needs no network.
sys.path.insert(0, os.path.dirname(__file__))
import _inventories  # noqa: E402

_written = _inventories.write(os.path.join(os.path.dirname(__file__), "_build", "inventories"))
intersphinx_mapping = {
    name: (url, _written[name])
    for name, url in {
        "python": "https://docs.python.org/3",
        "werkzeug": "https://werkzeug.palletsprojects.com/en/stable",
        "flask": "https://flask.palletsprojects.com/en/stable",
        "django": "https://docs.djangoproject.com/en/stable",
        "webob": "https://docs.pylonsproject.org/projects/webob/en/stable",
    }.items()
}

# WSGI's types come from typeshed (_typeshed.wsgi), which has no documentation to link to.
nitpick_ignore = [
    ("py:class", name) for name in ("WSGIApplication", "WSGIEnvironment", "StartResponse")
] + [
    # The access module's aliases (Authenticate, LoginUrl) as autodoc spells them in the
    # middleware's parameters; the aliases themselves are documented with the module.
    ("py:class", "t.Callable"),
    # open_directory's **options, spelt as the module imports typing.
    ("py:class", "t.Any"),
    # listen_on()'s return type: Python's inventory names the class socket.socket
    # under another role.
    ("py:class", "socket.socket"),
]
