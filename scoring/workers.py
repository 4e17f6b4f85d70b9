"""Scoring calls in worker processes, each with a time limit, so that the service stays responsive.

RDKit holds the GIL for the length of each call (standardisation of one large molecule can take
tens of milliseconds; before the size bounds, 20 s), so a thread cannot keep uvicorn's event loop
answering, and nothing can stop a thread that runs away. `WorkerPool` runs ``target(state, *args)``
in ``workers`` spawned processes, one call per process at a time; a call still running after
``timeout`` seconds has its process killed and replaced, and raises `WorkerTimeout`. The state
(the loaded `Scorer`) is pickled into each process once, at start: every process has its own copy,
so no call shares anything with another. `InProcess` is the same interface in this process (tests).
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["InProcess", "WorkerDied", "WorkerError", "WorkerPool", "WorkerTimeout", "WorkersBusy"]

log = logging.getLogger("fedmol.scoring")


class WorkerTimeout(Exception):
    """The call ran past the time limit; its process was killed (and is being replaced)."""


class WorkersBusy(Exception):
    """No worker became free within the time limit."""


class WorkerDied(Exception):
    """The worker process ended during the call (killed, or crashed in native code)."""


class WorkerError(Exception):
    """The call raised in the worker: ``str(exc)`` is the exception's type and message."""


class InProcess:
    """``target(state, *args)`` in the calling thread, one call at a time (no time limit)."""

    def __init__(self, state: Any, target: Callable[..., Any]) -> None:
        self.state, self.target = state, target
        self._lock = threading.Lock()  # MC dropout switches the model's mode: one call at a time

    def call(self, *args: Any) -> Any:
        with self._lock:
            return self.target(self.state, *args)

    def close(self) -> None:
        pass


def _worker_main(conn: Any, state: Any, target: Callable[..., Any]) -> None:
    """A worker process: answer calls until the pipe closes (the parent ended or closed the pool)."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)  # one core per worker: the pool is the parallelism
    conn.send(("ready", None))
    while True:
        try:
            args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            result = ("ok", target(state, *args))
        except Exception as exc:  # reported to the caller; the worker stays
            traceback.print_exc()
            result = ("error", f"{exc.__class__.__name__}: {str(exc)[:300]}")
        try:
            conn.send(result)
        except (BrokenPipeError, OSError):
            return


class _Worker:
    def __init__(self, ctx: Any, state: Any, target: Callable[..., Any], start_timeout: float) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, state, target), daemon=True,
                                   name="fedmol-scoring-worker")
        self.process.start()
        child.close()
        if not self.conn.poll(start_timeout):
            self.kill()
            raise RuntimeError(f"a scoring worker did not start within {start_timeout:g} s")
        try:
            self.conn.recv()
        except (EOFError, OSError):
            self.kill()
            raise RuntimeError(f"a scoring worker exited at start (exit code {self.process.exitcode})") from None

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self.conn.close()


class WorkerPool:
    """``workers`` processes that each run ``target(state, *args)``; a call has ``timeout`` seconds
    to finish, and ``wait`` seconds (default: ``timeout``) to find a free worker. Start-up waits
    until every worker is ready."""

    def __init__(self, state: Any, target: Callable[..., Any], *, workers: int = 1, timeout: float = 300.0,
                 wait: float | None = None, start_timeout: float = 300.0) -> None:
        if workers < 1 or timeout <= 0:
            raise ValueError("workers must be at least 1 and timeout positive")
        self.wait = timeout if wait is None else wait
        # spawn, not fork: torch's OpenMP pool and uvicorn's event loop are not fork-safe.
        self._ctx = multiprocessing.get_context("spawn")
        self.state, self.target, self.timeout, self.start_timeout = state, target, timeout, start_timeout
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        for _ in range(workers):
            self._add(_Worker(self._ctx, state, target, start_timeout))

    def _add(self, worker: _Worker) -> None:
        with self._lock:
            if self._closed:
                worker.kill()
                return
            self._all.add(worker)
        self._idle.put(worker)

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` and start another in the background (it joins the idle ones when ready)."""
        with self._lock:
            self._all.discard(worker)
        worker.kill()

        def start() -> None:
            try:
                self._add(_Worker(self._ctx, self.state, self.target, self.start_timeout))
            except Exception:
                if not self._closed:
                    log.exception("could not replace a scoring worker; the pool has one fewer")

        threading.Thread(target=start, name="fedmol-scoring-respawn", daemon=True).start()

    def call(self, *args: Any) -> Any:
        """The target's result; WorkersBusy, WorkerTimeout, WorkerDied or WorkerError otherwise."""
        try:
            worker = self._idle.get(timeout=self.wait)
        except queue.Empty:
            raise WorkersBusy(f"no scoring worker was free within {self.wait:g} s") from None
        started = time.monotonic()
        try:
            worker.conn.send(args)
            if not worker.conn.poll(self.timeout):
                log.warning("a scoring call ran past %g s: its worker is killed and replaced", self.timeout)
                self._replace(worker)
                raise WorkerTimeout(f"scoring stopped after {self.timeout:g} s")
            kind, payload = worker.conn.recv()
        except (EOFError, OSError):
            self._replace(worker)  # joins the process: its exit code is known then
            code = worker.process.exitcode
            raise WorkerDied(f"the scoring worker ended after {time.monotonic() - started:.1f} s "
                             f"(exit code {code})") from None
        self._idle.put(worker)
        if kind == "error":
            raise WorkerError(payload)
        return payload

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._all = list(self._all), set()
        for worker in workers:
            worker.kill()
