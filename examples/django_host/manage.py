"""Django's command line for the example project: ``python -m examples.django_host.manage
check`` runs the system checks, wsgi_proxy_listen's among them."""

from __future__ import annotations

import os
import sys

from django.core.management import execute_from_command_line


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_host.settings")
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
