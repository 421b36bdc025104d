"""Processes of other local users, for the tests of what one user can do to another.

The tests run as root on the project's machines (as CI does): root can start a
process as any uid, numeric, without an account. Two uids that no account uses
play the host's user and a second local user (an attacker). Their Python is the
test's own interpreter if they may run it, or the system's of the same version
(the test's may live in root's home, closed to others), with this checkout and
the virtual environment's packages on its path.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import typing as t

import pytest

from .cluster import ROOT

#: The host's user and another local user: uids that no account on a test machine uses.
HOST_UID, OTHER_UID = 64101, 64102


@functools.cache
def _python() -> tuple[str, dict[str, str]] | str:
    """An interpreter that :data:`HOST_UID` can run with this package, and its environment;
    or why there is none."""
    if os.getuid() != 0:
        return f"the tests run as uid {os.getuid()}, not root: they cannot start other users"
    paths = {sysconfig.get_paths()[kind] for kind in ("purelib", "platlib")}
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join([str(ROOT), *sorted(paths)])}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/{version}"):
        try:
            check = subprocess.run(
                [python, "-c", "import wsgi_proxy_listen, werkzeug"],
                user=HOST_UID,
                group=HOST_UID,
                env=env,
                cwd="/",
                capture_output=True,
            )
        except OSError:  # not theirs to run
            continue
        if check.returncode == 0:
            return python, env
    return (
        f"no {version} that uid {HOST_UID} can run with this checkout (tried {sys.executable}"
        f" and /usr/bin/{version}; install Debian's {version})"
    )


def need_other_users() -> None:
    """Skip, saying why in the summary, where processes of other users cannot start."""
    found = _python()
    if isinstance(found, str):
        pytest.skip(f"TWO-USER TEST NOT RUN: {found}")


def run_as(uid: int, *argv: str) -> None:
    """Run a command as ``uid`` and wait for it; it must succeed."""
    subprocess.run(argv, user=uid, group=uid, env={"PATH": "/usr/bin:/bin"}, cwd="/", check=True)


def python_as(uid: int, code: str, **options: t.Any) -> subprocess.Popen[str]:
    """Start Python running ``code`` (dedented) as ``uid``, with this package importable."""
    found = _python()
    assert not isinstance(found, str), found
    python, env = found
    return subprocess.Popen(
        [python, "-c", textwrap.dedent(code)],
        user=uid,
        group=uid,
        env=env,
        cwd="/",
        text=True,
        **options,
    )


def shared_tmp() -> str:
    """A fresh folder like ``/tmp``: root's, writable by everyone, sticky."""
    folder = tempfile.mkdtemp(prefix="wpl-", dir="/tmp")
    os.chmod(folder, 0o1777)
    return folder


def private_folder(parent: str, name: str, uid: int) -> str:
    """A folder of ``uid`` in ``parent``, closed to others."""
    path = os.path.join(parent, name)
    os.mkdir(path, 0o700)
    os.chown(path, uid, uid)
    return path
