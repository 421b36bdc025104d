"""Bottle as a listener: relative links, a form and a redirect.

The gotcha: a listener's URL without its trailing slash (``/proxy/sessions/notes``)
reaches the app with an empty ``PATH_INFO``, and a browser resolves the page's
relative links against the parent (``/proxy/sessions/page``). Bottle, like most apps,
does not redirect to the slash form. Link to ``url(session=...)``, which ends with
``/``. Bottle's ``redirect()`` and ``request.script_name`` already follow
``SCRIPT_NAME``.
"""

from __future__ import annotations

import html

import bottle
from flask import Flask

from wsgi_proxy_listen import listen, url

from ._host import host, serve

SESSION = "notes"


def notes_app() -> bottle.Bottle:
    app = bottle.Bottle()
    notes: list[str] = []

    @app.get("/")
    def index() -> str:
        items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
        return (
            '<!doctype html><head><title>notes</title><link rel="stylesheet" href="style.css">'
            '<link rel="icon" href="data:,"></head>'
            f'<h1>Notes</h1><ul id="notes">{items}</ul>'
            '<form method="post" action="add"><input name="note"><button>add</button></form>'
            '<a id="about" href="about">about</a>'
        )

    @app.get("/style.css")
    def style() -> str:
        bottle.response.content_type = "text/css"
        return "body { background: rgb(255, 250, 240); }"

    @app.post("/add")
    def add() -> None:
        notes.append(bottle.request.forms.getunicode("note") or "")
        bottle.redirect("./")  # absolute, from the request's own URL: under the prefix

    @app.get("/about")
    def about() -> str:
        return (
            '<!doctype html><head><title>about</title><link rel="icon" href="data:,"></head>'
            f'<p id="root">mounted at {html.escape(bottle.request.script_name)}</p>'
            '<a id="back" href="./">back</a>'
        )

    return app


def create_app() -> Flask:
    app = host("Notes", url(session=SESSION))
    listen(notes_app(), session=SESSION)
    return app


if __name__ == "__main__":
    serve(create_app())
