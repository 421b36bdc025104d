"""The toolchain lock, ``constraints.txt``: checks that ``make`` runs around it.

``python tools/lock.py check`` fails with one line when ``setup.cfg`` names a package
(in ``install_requires`` or any extra) that the lock does not pin, so a dependency added
without ``make lock`` is caught before anything installs. ``python tools/lock.py compare``
prints the versions installed in the running interpreter's environment beside the
lock's: what ``make test-latest`` tested that CI has not.

Standard library only: it runs before the virtual environment exists.
"""

from __future__ import annotations

import configparser
import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints.txt"
SETUP = ROOT / "setup.cfg"
PROJECT = "wsgi-proxy-listen"


def normalized(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def required() -> dict[str, str]:
    """Every package ``setup.cfg`` asks for, with the section that names it."""
    config = configparser.ConfigParser()
    config.read(SETUP, encoding="utf-8")
    sections = {"install_requires": config.get("options", "install_requires", fallback="")}
    if config.has_section("options.extras_require"):
        for extra, text in config.items("options.extras_require"):
            sections[f"extra {extra}"] = text
    names: dict[str, str] = {}
    for section, text in sections.items():
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            found = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
            if found:
                names.setdefault(normalized(found.group()), section)
    return names


def pinned() -> dict[str, str]:
    """The lock's ``name==version`` lines."""
    pins: dict[str, str] = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        found = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if found:
            pins[normalized(found.group(1))] = found.group(2)
    return pins


def check() -> int:
    if not LOCK.exists():
        print(f"{LOCK.name} is missing: run make lock", file=sys.stderr)
        return 1
    pins = pinned()
    missing = [f"{name} ({where})" for name, where in required().items() if name not in pins]
    if missing:
        print(
            f"{LOCK.name} pins no version of {', '.join(missing)} that setup.cfg asks for:"
            " run make lock and commit it",
            file=sys.stderr,
        )
        return 1
    return 0


def compare() -> int:
    pins = pinned()
    installed = {
        normalized(dist.metadata["Name"]): dist.version
        for dist in metadata.distributions()
        if dist.metadata["Name"] and normalized(dist.metadata["Name"]) != PROJECT
    }
    print(f"Python {sys.version.split()[0]}; versions installed, against {LOCK.name}:")
    for name in sorted(installed):
        locked = pins.get(name)
        if locked is None:
            print(f"  {name}=={installed[name]}  (not in the lock)")
        elif locked != installed[name]:
            print(f"  {name}=={installed[name]}  (lock: {locked})")
    same = sum(1 for name, version in installed.items() if pins.get(name) == version)
    print(f"  and {same} packages at the lock's version")
    return 0


if __name__ == "__main__":
    commands = {"check": check, "compare": compare}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python {sys.argv[0]} check|compare")
    sys.exit(commands[sys.argv[1]]())
