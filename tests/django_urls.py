"""URLs of the small Django project the tests use, as host and as listener."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"django {request.path_info} {request.path}", content_type="text/plain")


urlpatterns = [path("", index), path("page/", index)]
