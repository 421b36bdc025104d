"""URLs of the Django admin that tests/support/browser_hosts.py serves as a listener: the admin,
and its static files under the listener's own path (the listener has no web server of its
own to serve them)."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.staticfiles.views import serve
from django.urls import path, re_path

urlpatterns = [
    path("admin/", admin.site.urls),
    re_path(r"^static/(?P<path>.*)$", serve, {"insecure": True}),
]
