"""The documentation: every Python snippet of the README and of docs/ runs as written, in a
fresh interpreter (as a module, so that an ``if __name__ == "__main__":`` block, which would
start a server, does not run), and every example is shown somewhere. ``make docs`` builds
the site itself, with warnings as errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
TEXTS = {page.relative_to(ROOT).as_posix(): page.read_text() for page in PAGES}


class Snippet(t.NamedTuple):
    page: str
    line: int
    code: str


SNIPPETS = [
    Snippet(page, text[: found.start()].count("\n") + 1, found.group(1))
    for page, text in TEXTS.items()
    for found in re.finditer(r"```python\n(.*?)```", text, flags=re.DOTALL)
]


def test_the_docs_have_snippets() -> None:
    assert len(SNIPPETS) >= 12
    assert any(snippet.page == "README.md" for snippet in SNIPPETS)


@pytest.mark.parametrize(
    "snippet", SNIPPETS, ids=[f"{snippet.page}:{snippet.line}" for snippet in SNIPPETS]
)
def test_every_snippet_runs_as_written(snippet: Snippet, tmp_path: Path) -> None:
    (tmp_path / "snippet.py").write_text(snippet.code)
    env = {name: value for name, value in os.environ.items() if not name.startswith("WSGI_PROXY")}
    result = subprocess.run(
        [sys.executable, "-c", "import runpy; runpy.run_path('snippet.py', run_name='snippet')"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{snippet.page}:{snippet.line}\n{result.stderr}"


def test_every_example_is_shown() -> None:
    shown = "\n".join(TEXTS.values())
    projects = ("examples/django_host/", "examples/cluster/", "examples/recipes/")
    for path in sorted((ROOT / "examples").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if name.endswith("__init__.py") or name.startswith(projects):
            continue
        assert f"`{name}`" in shown, name
    for project in projects:
        assert f"`{project}`" in shown, project


def test_the_reference_names_every_variable_the_package_reads() -> None:
    """Found missing once (WSGI_PROXY_LISTEN_PUBLIC_URL): each variable is in the table."""
    sources = "".join(path.read_text() for path in (ROOT / "wsgi_proxy_listen").rglob("*.py"))
    read = set(re.findall(r"WSGI_PROXY_LISTEN_[A-Z_]*[A-Z]", sources))
    table = (ROOT / "docs" / "reference.rst").read_text()
    listed = set(re.findall(r"``(WSGI_PROXY_LISTEN_[A-Z_]+)``", table))
    assert read - {"WSGI_PROXY_LISTEN_TLS"} <= listed, sorted(read - listed)
