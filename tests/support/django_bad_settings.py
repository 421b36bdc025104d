"""The example project's settings with WSGI_PROXY_LISTEN taken from the environment
(TEST_WSGI_PROXY_LISTEN, a Python literal), for tests/test_django.py's system checks."""

from __future__ import annotations

import ast
import os

from examples.django_host.settings import *  # noqa: F403

WSGI_PROXY_LISTEN = ast.literal_eval(os.environ["TEST_WSGI_PROXY_LISTEN"])
