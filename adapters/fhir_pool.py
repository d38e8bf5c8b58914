"""Worker processes for the parts of a FHIR extraction: they die with their parent and stay quiet on Ctrl-C.

A killed ``extract`` must not leave workers running. On Linux each worker asks the kernel to SIGKILL it when its
parent dies (``prctl(PR_SET_PDEATHSIG)``); everywhere, a worker checks between files and batches that its parent
is still the process that started it, and exits when it is not (:func:`exit_if_orphaned`). Workers ignore SIGINT
(Ctrl-C reaches the whole process group, and one traceback per worker helps nobody): the parent gets the
KeyboardInterrupt, terminates its workers and leaves the finished parts in the manifest for ``--resume``. While
the parts run, SIGTERM to the parent is handled the same way.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

from omop_behrt.startup import skip_pyarrow_pandas_probe

_PR_SET_PDEATHSIG = 1
_parent: int | None = None         # set in worker processes only


def _worker_init(parent: int) -> None:
    """Runs first in each worker: die with ``parent``, leave Ctrl-C to it, default SIGTERM; pyarrow's pandas probe
    answered "no" (a worker runs only our code: without it each worker imported pandas, 0.3 CPU-s apiece)."""
    global _parent
    _parent = parent
    skip_pyarrow_pandas_probe()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):   # no libc prctl: the getppid check below still holds
            pass
    exit_if_orphaned()                      # the parent may have died before prctl took effect


def exit_if_orphaned() -> None:
    """In a worker whose parent has gone (re-parented to init or a subreaper): exit at once, silently."""
    if _parent is not None and os.getppid() != _parent:
        os._exit(1)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_parts(fn: Callable[[Any], Any], args: list, workers: int, done: Callable[[Any, Any], None]) -> None:
    """Call ``done(arg, fn(arg))`` for each of ``args`` in order, running ``fn`` in ``workers`` processes.

    On any exception (KeyboardInterrupt included) the workers are terminated before it propagates; results
    already passed to ``done`` stay done. A worker that dies (killed, out of memory) is one clear error.
    """
    if workers <= 1:
        for a in args:
            done(a, fn(a))
        return
    main = threading.current_thread() is threading.main_thread()
    before = set(multiprocessing.active_children())
    # fork on Linux (the default up to Python 3.13; 3.14 defaults to forkserver, whose workers are not our children
    # and so could neither check their parent nor die with it); elsewhere the platform's default, spawn
    ctx = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),))
    old_term = signal.signal(signal.SIGTERM, _interrupt) if main else None
    finished = False
    try:
        # submit, not map: map cancels its pending futures when the loop is left, and the executor's manager
        # thread then fails (InvalidStateError traceback) marking those cancelled futures broken after the
        # workers are terminated below; futures left pending are simply marked broken
        futures = [pool.submit(fn, a) for a in args]
        for a, f in zip(args, futures):
            done(a, f.result())
        finished = True
    except BrokenProcessPool:
        raise ChildProcessError("a worker process died before its part was finished (killed, or out of memory?); "
                                "the parts finished so far are kept: run again with --resume to continue") from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, old_term)
        if not finished:
            for p in set(multiprocessing.active_children()) - before:
                p.terminate()
        pool.shutdown(wait=True)
