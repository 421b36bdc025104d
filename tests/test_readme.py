"""The README's Python snippets are copied from tested examples."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
EXAMPLES = {
    path.relative_to(ROOT).as_posix(): path.read_text()
    for path in sorted((ROOT / "examples").rglob("*.py"))
}


def test_readme_has_snippets() -> None:
    assert len(SNIPPETS) >= 8


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.splitlines()[0][:40] for s in SNIPPETS])
def test_snippet_is_copied_from_an_example(snippet: str) -> None:
    sources = [name for name, text in EXAMPLES.items() if snippet in text]
    assert sources, f"this README snippet is in no file under examples/:\n{snippet}"


def test_every_example_is_listed() -> None:
    projects = ("examples/django_host/", "examples/cluster/", "examples/recipes/")
    for name in EXAMPLES:
        if name.endswith("__init__.py") or name.startswith(projects):
            continue
        assert f"`{name}`" in README, name
    for project in projects:
        assert f"`{project}`" in README, project
