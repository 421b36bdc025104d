"""WSGI entry point of the Django host: Django's handler wrapped in ProxyMiddleware.

Serve it with any WSGI server, for example
``gunicorn examples.django_host.wsgi`` or the werkzeug dev server.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_host.settings")

from wsgi_proxy_listen.django import get_wsgi_application

application = get_wsgi_application()
