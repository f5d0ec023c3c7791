"""Where rimrl writes: output folders checked before any work, and one writer per folder.

- :func:`writable_dir_problem` says (without creating anything) why a folder could not be
  created or written, so a CLI refuses ``-f /proc/x`` or ``--out /etc/hostname`` *before* it
  trains or evaluates instead of failing after the work is done;
- :func:`directory_lock` holds a ``filelock`` lock on a folder (a run directory, an evaluation's
  ``--out``) for as long as a process writes there; a second writer gets :class:`DirectoryBusyError`
  naming the holder's pid and command. The lock is released by the kernel if its holder dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

__all__ = ["LOCK_FILES", "DirectoryBusyError", "directory_lock", "has_content", "writable_dir_problem"]

LOCK_FILE = ".rimrl.lock"
#: Who holds the lock (pid, command), for the message a second writer gets.
OWNER_FILE = ".rimrl.owner"
LOCK_FILES = (LOCK_FILE, OWNER_FILE)
#: Below this much free space a run or an evaluation is refused up front.
MIN_FREE_BYTES = 16 * 2**20


class DirectoryBusyError(RuntimeError):
    """Another process holds the folder's lock."""


def has_content(directory: Path) -> bool:
    """Whether ``directory`` exists and holds anything besides rimrl's lock files."""
    return directory.is_dir() and any(child.name not in LOCK_FILES for child in directory.iterdir())


def writable_dir_problem(directory: str | Path) -> str | None:
    """Why ``directory`` cannot be used as an output folder, or ``None`` if it can.

    Checks, creating nothing that stays: no component of the path is an existing non-folder; the
    nearest existing ancestor accepts a new folder (probed with a temporary one, removed at once:
    permission bits lie for root and for read-only or virtual file systems such as ``/proc``); at
    least :data:`MIN_FREE_BYTES` are free there.
    """
    path = Path(directory).expanduser().absolute()
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{str(existing)!r} exists and is not a folder"
    if existing == path and not os.access(path, os.W_OK | os.X_OK):
        return f"{str(path)!r} is not writable"
    try:
        probe = tempfile.mkdtemp(prefix=".rimrl-probe-", dir=existing)
    except OSError as error:
        return f"cannot create {str(path)!r}: {error.strerror or error}"
    os.rmdir(probe)
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        return f"the disk holding {str(path)!r} is full ({free // 2**20} MiB free)"
    return None


def _owner(directory: Path) -> str:
    try:
        owner = json.loads((directory / OWNER_FILE).read_text(encoding="utf-8"))
        return f"pid {owner['pid']}: {owner['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


@contextlib.contextmanager
def directory_lock(directory: str | Path, what: str = "folder") -> Iterator[None]:
    """Hold ``directory``'s lock (the folder is created if needed) while the block runs.

    :raises DirectoryBusyError: another process holds it (its pid and command are in the message).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(directory / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise DirectoryBusyError(
            f"{what} {str(directory)!r} is in use by another rimrl process ({_owner(directory)}); wait for it "
            f"to finish or stop it"
        ) from None
    owner = directory / OWNER_FILE
    try:
        owner.write_text(json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv)}), encoding="utf-8")
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()
