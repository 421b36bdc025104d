"""
The embedded directory's folder
===============================

The folder of an embedded directory is its access control: whoever can write
in it can route the host's requests (and its users' cookies) to a socket of
their own. So the folder is taken only where no other user can change what
its path leads to:

- every folder on the way belongs to ``root`` or to this user, and one that
  others may write to has the sticky bit (as ``/tmp`` does: there, nobody
  can remove or replace an entry of another user);
- a symbolic link on the way is followed only if it belongs to ``root`` or to
  this user (it then sits in such a folder, so nobody else can replace it); a
  link of another user is refused: that user could point it elsewhere later;
- the folder itself belongs to this user and is closed to others (``0700``).

The path that the links lead to is checked once and used from then on (a link
changed later changes nothing), and checked again whenever the table or the
socket is opened anew: after a fork, after an outage.
"""

from __future__ import annotations

import contextlib
import os
import stat

__all__ = ["UnsafeFolder", "secure_folder"]

#: Links followed on the way to a folder before it counts as a loop (as Linux's limit).
_MAX_LINKS = 40


class UnsafeFolder(ValueError):
    """A folder that another user could change or read."""


def secure_folder(folder: str, *, create: bool) -> str:
    """The path ``folder`` leads to, once checked as the module says.

    :param folder: an absolute, normalised path.
    :param create: create the folder (``0700``) and its missing parents.
    :raises UnsafeFolder: with what is wrong and how to fix it.
    """
    uid = os.getuid()
    pending = folder.split("/")[::-1]  # the names still to walk, the next one last
    real = "/"
    links = 0
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            real = os.path.dirname(real)  # a folder already checked
            continue
        path = os.path.join(real, name)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            if not create:
                raise UnsafeFolder(f"the directory folder {folder!r} is gone ({path!r})") from None
            try:
                # another process (a sibling worker) may make it first: then check it as found
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path, 0o700)
                info = os.lstat(path)
            except OSError as error:
                raise UnsafeFolder(
                    f"cannot create the directory folder {folder!r}: {error}"
                ) from None
        except OSError as error:
            raise UnsafeFolder(f"cannot use the directory folder {folder!r}: {error}") from None
        if stat.S_ISLNK(info.st_mode):
            if info.st_uid not in (0, uid):
                where = "" if path == folder else f", on the way to the directory folder {folder!r}"
                raise UnsafeFolder(
                    f"{path!r} is a link that another user (uid {info.st_uid}) can point"
                    f" elsewhere at any time{where}: name a folder of this user, such as one"
                    " in $XDG_RUNTIME_DIR"
                )
            links += 1
            if links > _MAX_LINKS:
                raise UnsafeFolder(f"too many links on the way to {folder!r}")
            target = os.readlink(path)
            if target.startswith("/"):
                real = "/"
            pending.extend(target.split("/")[::-1])
            continue
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafeFolder(f"{path!r}, on the way to the directory folder, is not a folder")
        if pending and any(part not in ("", ".") for part in pending):
            _check_parent(folder, path, info, uid)
        real = path
    return _check_leaf(real, uid)


def _check_parent(folder: str, path: str, info: os.stat_result, uid: int) -> None:
    if info.st_uid not in (0, uid):
        raise UnsafeFolder(
            f"the directory folder {folder!r} is inside {path!r}, which belongs to another"
            f" user (uid {info.st_uid}) who could replace what is in it: name a folder"
            " inside folders of root or of this user, such as one in $XDG_RUNTIME_DIR"
        )
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise UnsafeFolder(
            f"the directory folder {folder!r} is inside {path!r}, which others may write to"
            f" (mode {stat.filemode(info.st_mode)}) and so replace what is in it: name a"
            " folder inside folders closed to others, such as one in $XDG_RUNTIME_DIR"
        )


def _check_leaf(real: str, uid: int) -> str:
    info = os.lstat(real)
    if info.st_uid != uid:
        raise UnsafeFolder(
            f"the folder {real!r} belongs to another user (uid {info.st_uid}): its"
            " permissions are the access control of the embedded directory; use a folder"
            " of this user"
        )
    if info.st_mode & 0o077:
        raise UnsafeFolder(
            f"the folder {real!r} is open to other users (mode {stat.filemode(info.st_mode)}):"
            " its permissions are the access control of the embedded directory; run"
            f" 'chmod 700 {real}' or name a new folder"
        )
    return real
