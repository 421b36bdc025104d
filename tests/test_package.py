"""The package's public face: what it exports, what importing it imports (never webob, Flask
or Django), the metadata and the typing marker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import wsgi_proxy_listen

ROOT = Path(__file__).resolve().parent.parent


def test_import_never_imports_webob_flask_or_django() -> None:
    code = (
        "import sys, wsgi_proxy_listen, wsgi_proxy_listen.handlers, wsgi_proxy_listen.middleware;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('webob', 'flask', 'django')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_all_names_exist() -> None:
    assert sorted(wsgi_proxy_listen.__all__) == sorted(set(wsgi_proxy_listen.__all__))
    for name in wsgi_proxy_listen.__all__:
        assert hasattr(wsgi_proxy_listen, name), name


def test_typed_marker_is_shipped() -> None:
    assert (ROOT / "wsgi_proxy_listen" / "py.typed").is_file()
    manifest = (ROOT / "MANIFEST.in").read_text()
    assert "wsgi_proxy_listen/py.typed" in manifest
    assert "py.typed" in (ROOT / "setup.cfg").read_text()


def test_version_matches_changes() -> None:
    assert wsgi_proxy_listen.__version__ == "0.1.0"
    assert "## Unreleased" in (ROOT / "CHANGES.md").read_text()


def test_every_subpackage_is_packaged() -> None:
    """setup.cfg lists every package directory, so that none is left out of the wheel."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    found = {
        path.parent.relative_to(ROOT).as_posix().replace("/", ".")
        for path in (ROOT / "wsgi_proxy_listen").rglob("__init__.py")
    }
    assert listed == found
