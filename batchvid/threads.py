"""Blocking work off the event loop, with a deadline, on threads that never hold up exit.

anyio's worker threads are joined when the process exits, so a call that never
returns (a file check stuck in a decoder, a database whose network went
silent) would keep a finished run from exiting.  :class:`DaemonThreads` runs
each call on one of a few daemon threads instead: the caller waits at most
``timeout`` seconds (then :class:`TimeoutError`), and a call left behind ends
by itself, or with the process.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, Final, TypeVar, cast

import anyio
import anyio.from_thread
import anyio.lowlevel

__all__ = ["DaemonThreads"]

T = TypeVar("T")
_STOP: Final = object()


class DaemonThreads:
    """Up to ``size`` daemon threads named ``name``, started as calls need them."""

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        #: Calls queued or running: when they reach the threads there are, one more starts.
        self._busy = 0
        self._lock = threading.Lock()

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float) -> T:
        """``fn(*args)`` on a daemon thread: its result or its exception, or TimeoutError
        after ``timeout`` seconds (the call goes on alone; its outcome is dropped)."""
        token = anyio.lowlevel.current_token()
        done = anyio.Event()
        outcome: list[tuple[bool, object]] = []

        def call() -> None:
            try:
                outcome.append((True, fn(*args)))
            except BaseException as exc:  # handed to the waiting task
                outcome.append((False, exc))
            finally:
                with contextlib.suppress(RuntimeError):  # the event loop has gone
                    anyio.from_thread.run_sync(done.set, token=token)

        self._submit(call)
        with anyio.fail_after(timeout):
            await done.wait()
        ok, value = outcome[0]
        if ok:
            return cast(T, value)
        assert isinstance(value, BaseException)
        raise value

    def _submit(self, call: Callable[[], None]) -> None:
        with self._lock:
            if self._busy >= len(self._threads) and len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._serve, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            self._busy += 1
        self._calls.put(call)

    def _serve(self) -> None:
        while True:
            call = self._calls.get()
            if call is _STOP:
                return
            call()
            with self._lock:
                self._busy -= 1

    def close(self) -> None:
        """Let idle threads end (a call still running ends by itself)."""
        for _ in self._threads:
            self._calls.put(_STOP)
        self._threads.clear()
