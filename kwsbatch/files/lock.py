"""One writer per output file: an advisory lock that two overlapping cron runs cannot both take.

The lock is ``flock`` on ``<output>.lock``. The kernel drops it when its holder exits, however it
exits (SIGKILL included), so a stale lock file never blocks the next run. A holder that ends
normally, error or not, removes the file while it still holds the lock; a run that opened the file
before that and then gets the lock sees that the path no longer names its file and starts over on a
new one, so two runs never hold locks on two different files at once. Only a regular file at that
very path is a lock: never one reached through a link, never a FIFO or device put there.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kwsbatch.errors import KwsError


class LockedError(KwsError):
    """Another run holds the output's lock."""


_held: set[int] = set()  # descriptors of the locks this process holds


def close_inherited_locks() -> None:
    """In a forked worker: close the copies of the parent's lock descriptors.

    An flock belongs to the open file, which a fork shares: a worker that kept its copy would hold
    the lock for as long as it lived, so a run SIGKILLed with its workers still dying would keep
    the next cron run out (exit 75) for a moment. The parent's own descriptor keeps the lock.
    """
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


def lock_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".lock")


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, *, wait: bool = False, on_wait: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the lock on out while the block runs; without wait, fail at once if another run has it.

    With wait, on_wait is told once, with a line naming the holder, before this run queues behind it.
    """
    path = lock_path(out)
    fd = _acquire(path, out, wait, on_wait)
    holder = os.getpid()  # a forked worker that somehow ran this block's end must not remove the parent's file
    try:
        # Who holds it, for the message a second run prints; written after locking, so never torn.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        _held.add(fd)
        yield path
    finally:
        _held.discard(fd)
        if os.getpid() == holder and _names(path, fd):
            with contextlib.suppress(OSError):
                path.unlink()  # while still held: see the module's docstring
        os.close(fd)  # closing the descriptor releases the lock


def _acquire(path: Path, out, wait: bool, on_wait: Callable[[str], None] | None) -> int:
    """A descriptor of path holding its flock; a file its holder removed while we queued is left for the new one."""
    told = False
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Never through a link, and never blocking on a FIFO put there: only a regular file is a lock.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
        except OSError as e:
            raise KwsError(f"{out}: cannot create its lock file {path} ({e.strerror})") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise KwsError(f"{path}: is not a regular file, where this run keeps its lock file; move it away and run again")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                if not wait:
                    raise LockedError(
                        f"{out}: another kwsbatch run is writing it ({holder}); "
                        "this run did nothing (use --wait to queue behind it)"
                    ) from None
                if on_wait is not None and not told:
                    on_wait(f"{out}: another kwsbatch run is writing it ({holder}); waiting for it to finish")
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _names(path, fd):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _names(path: Path, fd: int) -> bool:
    """Whether path itself (not through a link) still names the open file fd."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    opened = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (opened.st_dev, opened.st_ino)
