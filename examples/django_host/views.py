"""Views of the Django host: a page, and a route that starts a session."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from werkzeug.wrappers import Request, Response

from wsgi_proxy_listen import listen


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("django host\n", content_type="text/plain")


def start_report(request: HttpRequest, report_id: str) -> HttpResponse:
    """POST registers a CSV export for the session ``report_id`` and returns its URL."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])

    def export(listener_request: Request) -> Response:
        return Response(f"report,{report_id}\n", content_type="text/csv")

    handle = listen(export, session=report_id)
    return HttpResponse(handle.url("/data.csv", request.META) + "\n", content_type="text/plain")
