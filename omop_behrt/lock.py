"""An exclusive OS file lock: one writer of a target (an export, a work directory) at a time.

``flock`` is dropped by the kernel when its holder exits, killed or not, so a crashed run never leaves a stale
lock behind. Export targets wait for their turn (bounded); work directories refuse a second run at once.
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Iterator


def writing_folder(folder: Path, what: str, timeout: float = 600) -> "AbstractContextManager[None]":
    """Hold ``folder`` while a run writes ``what`` (a model, a task, a report) into it: two runs take turns, so it
    ends as the last one's files, whole. The folder itself is locked: nothing is added to it or beside it."""
    return exclusive_lock(folder, timeout, f"{folder}: another run has been writing {what} here for "
                          f"{timeout / 60:g} minutes", TimeoutError)


@contextmanager
def exclusive_lock(lock_path: Path, timeout: float, busy: str,
                   error: type[Exception] = BlockingIOError) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path``; after ``timeout`` s of waiting (0: at once) raise ``error(busy)``.

    A file is created if needed; an existing folder is locked itself (no file is added to it or beside it).
    """
    fd = os.open(lock_path, os.O_RDONLY) if Path(lock_path).is_dir() else os.open(lock_path, os.O_WRONLY | os.O_CREAT
                                                                                     | os.O_APPEND, 0o644)
    try:
        deadline, pause = time.monotonic() + timeout, 0.02
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise error(busy) from None
                time.sleep(pause)
                pause = min(pause * 1.5, 0.5)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
