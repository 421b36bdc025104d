"""The embedded directory's folder is its access control: another local user can neither
lead the host into a folder of theirs nor make the host touch a file it did not make.

The tests that need a second local user run the host's and the attacker's code as two
uids that are not root (tests/support/users.py); where they cannot, they say so in the
summary of the run."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from werkzeug.test import Client

from wsgi_proxy_listen import ProxyMiddleware, Registry
from wsgi_proxy_listen.cluster import EmbeddedDirectory
from wsgi_proxy_listen.cluster.folder import UnsafeFolder, secure_folder

from .support.cluster import forge_rows, short_folder
from .support.users import (
    HOST_UID,
    OTHER_UID,
    need_other_users,
    private_folder,
    python_as,
    run_as,
    shared_tmp,
)
from .support.wsgi import Host

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def folder() -> Iterator[str]:
    made = short_folder()
    try:
        yield made
    finally:
        shutil.rmtree(made)


@pytest.fixture
def tmp() -> Iterator[str]:
    """A folder like /tmp (root's, open to everyone, sticky)."""
    made = shared_tmp()
    try:
        yield made
    finally:
        shutil.rmtree(made)


def host_opens(path: str) -> str:
    """What the host's user (not root) gets from ``Registry(directory=path)``."""
    host = python_as(
        HOST_UID,
        f"""
        from wsgi_proxy_listen import Registry
        try:
            registry = Registry(directory={path!r})
        except ValueError as error:
            print("REFUSED", error)
        else:
            print("OPENED", registry.directory.folder)
        """,
        stdout=subprocess.PIPE,
    )
    with host:
        out, _ = host.communicate(timeout=30)
    return out.strip()


# -- another local user ------------------------------------------------------------------------


def test_another_users_link_is_refused_before_it_can_be_pointed_elsewhere(tmp: str) -> None:
    """The attack of the review, by a second local user: a link in /tmp to a folder of the
    host's user, which the attacker points at a folder of their own once the host took it,
    holding a table that sends the host's session to the attacker's runtime."""
    need_other_users()
    own = private_folder(tmp, "host-private", HOST_UID)
    evil = os.path.join(tmp, "evil")
    link = os.path.join(tmp, "proxy")
    run_as(OTHER_UID, "ln", "-s", own, link)
    attacker = python_as(
        OTHER_UID,
        f"""
        import os
        from werkzeug.wrappers import Response
        from wsgi_proxy_listen import connect, listen, serve_forever
        connect({evil!r})
        listen(lambda request: Response("the attacker's page"), session="report-1")
        os.chmod({evil!r}, 0o777)
        for name in os.listdir({evil!r}):
            os.chmod(os.path.join({evil!r}, name), 0o777)
        print("ready", flush=True)
        serve_forever()
        """,
        stdout=subprocess.PIPE,
    )
    host = python_as(
        HOST_UID,
        f"""
        import sys
        from werkzeug.test import Client
        from wsgi_proxy_listen import ProxyMiddleware, Registry
        try:
            registry = Registry(directory={link!r})
        except ValueError as error:
            print("REFUSED", error, flush=True)
            sys.exit()
        app = ProxyMiddleware(lambda environ, start_response: [], registry)
        print("OPENED", flush=True)
        sys.stdin.readline()
        answer = Client(app).get("/proxy/sessions/report-1/")
        print(answer.status, answer.get_data(as_text=True), flush=True)
        """,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert attacker.stdout is not None
        assert host.stdout is not None
        assert attacker.stdout.readline().strip() == "ready"
        opened = host.stdout.readline().strip()
        # The attacker swaps the link for one to their folder.
        run_as(OTHER_UID, "ln", "-s", evil, link + ".new")
        run_as(OTHER_UID, "mv", "-T", link + ".new", link)
        out, _ = host.communicate("\n", timeout=30)
        assert "the attacker's page" not in out
        assert opened == (
            f"REFUSED {link!r} is a link that another user (uid {OTHER_UID}) can point"
            " elsewhere at any time: name a folder of this user, such as one in"
            " $XDG_RUNTIME_DIR"
        )
        sockets = [name for name in os.listdir(evil) if name.endswith(".sock")]
        assert sockets == [f"{attacker.pid}-{sockets[0].split('-')[1]}"], (
            "the host made a socket in the attacker's folder"
        )
        assert os.listdir(own) == []
    finally:
        for process in (attacker, host):
            process.kill()
            process.communicate(timeout=10)


def test_a_folder_inside_a_folder_of_another_user_is_refused(tmp: str) -> None:
    need_other_users()
    theirs = os.path.join(tmp, "theirs")
    run_as(OTHER_UID, "mkdir", "-m", "755", theirs)
    run_as(OTHER_UID, "mkdir", "-m", "777", os.path.join(theirs, "proxy"))
    for path in (os.path.join(theirs, "proxy"), os.path.join(theirs, "new")):
        assert host_opens(path) == (
            f"REFUSED the directory folder {path!r} is inside {theirs!r}, which belongs to"
            f" another user (uid {OTHER_UID}) who could replace what is in it: name a folder"
            " inside folders of root or of this user, such as one in $XDG_RUNTIME_DIR"
        )
    assert os.listdir(theirs) == ["proxy"]


def test_the_hosts_folder_in_a_sticky_tmp_is_its_own(tmp: str) -> None:
    """The same layout the attack uses, without the attacker's link: accepted, and created."""
    need_other_users()
    path = os.path.join(tmp, "proxy")
    assert host_opens(path) == f"OPENED {path}"
    info = os.lstat(path)
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (HOST_UID, 0o700)


def test_a_folder_of_another_user_is_refused(tmp: str) -> None:
    need_other_users()
    theirs = private_folder(tmp, "theirs", OTHER_UID)
    assert host_opens(theirs) == (
        f"REFUSED the folder {theirs!r} belongs to another user (uid {OTHER_UID}): its"
        " permissions are the access control of the embedded directory; use a folder of"
        " this user"
    )


# -- the path ----------------------------------------------------------------------------------


def test_the_folder_is_created_closed_to_others(folder: str) -> None:
    path = os.path.join(folder, "a", "new")
    EmbeddedDirectory(path)
    for made in (path, os.path.dirname(path)):
        assert stat.S_IMODE(os.stat(made).st_mode) == 0o700


def test_a_folder_that_a_sibling_worker_creates_first_is_taken(
    folder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers of one server start together: the one whose mkdir loses the race checks
    the folder the other made, and starts (gunicorn stops the whole server otherwise)."""
    path = os.path.join(folder, "new")
    mkdir = os.mkdir

    def sibling_first(target: str, mode: int = 0o777) -> None:
        mkdir(target, mode)  # the sibling's, between this worker's lstat and its mkdir
        raise FileExistsError(target)

    monkeypatch.setattr(os, "mkdir", sibling_first)
    assert secure_folder(path, create=True) == path
    monkeypatch.undo()
    os.chmod(path, 0o755)
    with pytest.raises(UnsafeFolder, match="chmod 700"):
        secure_folder(path, create=True)  # what the sibling made is checked as any folder


@pytest.mark.parametrize(
    ("path", "message"),
    [
        pytest.param("relative/path", "use an absolute path", id="relative"),
        pytest.param("/tmp/" + "x" * 120, "too long for Unix sockets", id="too-long"),
    ],
)
def test_unusable_folders_are_refused(path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EmbeddedDirectory(path)


def test_a_folder_open_to_others_is_refused(folder: str) -> None:
    os.chmod(folder, 0o755)
    with pytest.raises(ValueError, match="chmod 700"):
        EmbeddedDirectory(folder)


def test_a_file_is_not_a_folder(folder: str) -> None:
    path = os.path.join(folder, "file")
    open(path, "w").close()
    with pytest.raises(ValueError, match="is not a folder"):
        EmbeddedDirectory(path)
    with pytest.raises(ValueError, match="is not a folder"):
        EmbeddedDirectory(os.path.join(path, "below"))


@pytest.mark.parametrize(("mode", "opened"), [(0o777, False), (0o1777, True), (0o775, False)])
def test_a_folder_inside_one_that_others_may_write_needs_the_sticky_bit(
    folder: str, mode: int, opened: bool
) -> None:
    """Without the sticky bit, anyone who may write in a folder may rename what is in it and
    put a folder of their own in its place."""
    os.chmod(folder, mode)
    path = os.path.join(folder, "proxy")
    if opened:
        assert EmbeddedDirectory(path).folder == path
    else:
        with pytest.raises(ValueError, match="which others may write to"):
            EmbeddedDirectory(path)
        assert os.listdir(folder) == []


def test_a_link_of_this_user_is_followed_once(folder: str) -> None:
    """The path a link led to is the folder from then on: a link changed later changes
    nothing (here by the same user; another user's link is refused)."""
    first, second = os.path.join(folder, "first"), os.path.join(folder, "second")
    os.mkdir(first, 0o700)
    os.mkdir(second, 0o700)
    link = os.path.join(folder, "current")
    os.symlink("first", link)
    directory = EmbeddedDirectory(link, lease=3)
    try:
        assert directory.folder == first
        os.unlink(link)
        os.symlink("second", link)
        registry = Registry(directory=directory)
        client = Client(ProxyMiddleware(Host(), registry))
        client.get("/")  # serving: what it registers now is published
        registry.listen(lambda request: "x", session="s")
        assert "directory.sqlite3" in os.listdir(first)
        assert os.listdir(second) == []
    finally:
        directory.close()


def test_links_that_loop_are_refused(folder: str) -> None:
    os.symlink("b", os.path.join(folder, "a"))
    os.symlink("a", os.path.join(folder, "b"))
    with pytest.raises(ValueError, match="too many links"):
        EmbeddedDirectory(os.path.join(folder, "a"))


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_the_folder_is_checked_again_when_a_forked_child_opens_it(folder: str) -> None:
    """Opened safely at first, opened to others later: a child forked afterwards (a gunicorn
    worker, a runtime) opens neither the table nor a socket there, and says why."""
    script = f"""
import logging, os, sys
from werkzeug.test import Client
from wsgi_proxy_listen import ProxyMiddleware, Registry
logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(message)s")
registry = Registry(directory={folder!r})
app = ProxyMiddleware(lambda environ, start_response: [], registry)
print("parent", Client(app).get("/proxy/sessions/nobody/").status, flush=True)
os.chmod({folder!r}, 0o755)
pid = os.fork()
if pid == 0:
    print("child", os.getpid(), Client(app).get("/proxy/sessions/nobody/").status, flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "parent 404 Not Found", done
    child = next(line.split() for line in lines if line.startswith("child"))
    assert child[2:] == ["503", "Service", "Unavailable"], done
    assert any(line.startswith("ERROR") and "open to other users" in line for line in lines), done
    assert not [name for name in os.listdir(folder) if name.startswith(f"{child[1]}-")]


# -- what the host deletes and where it connects ----------------------------------------------


def test_cleanup_deletes_only_sockets_that_owner_ids_name_in_the_folder(folder: str) -> None:
    """The rows of dead owners name files by their address, or by an owner id that leads
    out of the folder: the host's clean-up removes neither, only the stale socket of a
    well-formed owner id."""
    outside = short_folder()
    try:
        victim = os.path.join(outside, "victim")
        open(victim, "w").close()
        plain = os.path.join(folder, "4-0123456789.sock")  # a well-formed name, not a socket
        open(plain, "w").close()
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(os.path.join(folder, "5-0123456789.sock"))
        stale.close()
        directory = EmbeddedDirectory(folder, lease=0.3)
        registry = Registry(directory=directory)
        client = Client(ProxyMiddleware(Host(), registry))
        client.get("/")  # serving: the heartbeat runs
        registry.listen(lambda request: "x", session="mine")  # published: the table exists
        gone = time.time() - 60
        forge_rows(
            folder,
            ("1-0123456789", victim, gone, None),
            (f"../{os.path.basename(outside)}/victim", victim, gone, None),
            ("4-0123456789", victim, gone, None),
            ("5-0123456789", victim, gone, None),
        )
        deadline = time.monotonic() + 10
        while os.path.exists(os.path.join(folder, "5-0123456789.sock")):
            assert time.monotonic() < deadline, "the stale socket was never removed"
            time.sleep(0.05)
        assert os.path.exists(victim)
        assert os.path.exists(plain)
        directory.close()
    finally:
        shutil.rmtree(outside)


def test_a_row_never_says_where_to_connect(folder: str, caplog: pytest.LogCaptureFixture) -> None:
    """A live row whose address is another socket: the host connects only to the socket its
    owner id names in the folder (none there: that owner is gone, its entries dropped, and a
    file of that name left as it is); a row of an owner id that no process makes is none."""
    directory = EmbeddedDirectory(folder, lease=3)
    registry = Registry(directory=directory)
    client = Client(ProxyMiddleware(Host(), registry))
    client.get("/")  # serving
    registry.listen(lambda request: "x", session="mine")  # published: the table exists
    elsewhere = os.path.join(folder, "elsewhere.sock")
    trap = socket.socket(socket.AF_UNIX)
    try:
        trap.bind(elsewhere)
        trap.listen(8)
        trap.setblocking(False)
        plain = os.path.join(folder, "7-0123456789.sock")
        open(plain, "w").close()
        soon = time.time() + 60
        forge_rows(
            folder,
            ("6-0123456789", elsewhere, soon, "by-address"),
            ("7-0123456789", elsewhere, soon, "by-file"),
            ("../elsewhere", elsewhere, soon, "by-id"),
        )
        with caplog.at_level(logging.WARNING, logger="wsgi_proxy_listen"):
            assert client.get("/proxy/sessions/by-id/").status_code == 404
            for session in ("by-address", "by-file"):
                assert client.get(f"/proxy/sessions/{session}/").status_code == 502
                assert client.get(f"/proxy/sessions/{session}/").status_code == 404
        gone = "is gone: its entries were removed"
        assert [record.getMessage() for record in caplog.records] == [
            f"the owner of session 'by-address' at {folder}/6-0123456789.sock {gone}",
            f"the owner of session 'by-file' at {folder}/7-0123456789.sock {gone}",
        ]
        with pytest.raises(BlockingIOError):
            trap.accept()
        assert os.path.exists(plain)
        assert os.path.exists(elsewhere)
    finally:
        trap.close()
        directory.close()
