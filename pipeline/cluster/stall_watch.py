"""The no-progress watchdog of the stages' batch loops: a loop that receives no batch for
`ray.stall_timeout_s` seconds stops with StalledError, which says what Ray waits for.

A cluster that lost the CPUs its tasks need otherwise waits without end and without a
word. The loop blocks inside Ray Data's iterator, which only a signal interrupts: the
watch thread sends SIGINT to the main thread, Ray Data shuts its execution down as on a
Ctrl-C, and the loop's `finally` keeps every finished row for the rerun. Off the main
thread (a library caller's worker thread) there is no watch."""

from __future__ import annotations

import signal
import threading
import time

from pipeline.core.errors import StalledError


class StallWatch:
    """`with StallWatch(timeout, label) as watch:` around a loop that calls `watch.beat()`
    for each batch it receives."""

    def __init__(self, timeout: float | None, label: str):
        self.timeout, self.label = timeout, label
        self.last = time.monotonic()
        self.message: str | None = None
        self._stop = threading.Event()
        self._on_sigint = None

    def beat(self) -> None:
        self.last = time.monotonic()

    def __enter__(self) -> StallWatch:
        if self.timeout is not None and threading.current_thread() is threading.main_thread():
            # SIGINT must raise KeyboardInterrupt in the loop, whatever a library installed
            # before (Ray Train leaves a handler of its own behind).
            self._on_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
            self.last = time.monotonic()
            threading.Thread(target=self._watch, name=f"{self.label} watch", daemon=True).start()
        return self

    def _watch(self) -> None:
        from pipeline.cluster.runtime import waiting_for

        while not self._stop.wait(min(1.0, self.timeout / 4)):
            if time.monotonic() - self.last > self.timeout:
                # Asked now, while the demands are still pending.
                waits = waiting_for()
                self.message = (
                    f"{self.label}: no batch finished in {self.timeout:g} s "
                    "(ray.stall_timeout_s), so the stage stops rather than wait without end."
                    + (f" Ray's {waits}." if waits else "")
                    + " A cluster that lost nodes may have too little left for the work: "
                    "add nodes or lower the stage's concurrency, then rerun; finished rows "
                    "are kept."
                )
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                return

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._on_sigint is not None:
            signal.signal(signal.SIGINT, self._on_sigint)
        if exc_type is KeyboardInterrupt and self.message is not None:
            _let_ray_data_stop()
            raise StalledError(self.message) from None


def _let_ray_data_stop(seconds: float = 30.0) -> None:
    """Wait (bounded) for Ray Data's executor threads to wind down: one still running when
    the process shuts Ray down makes Ray's core worker end the process with status 1,
    hiding the stage's own exit status."""
    deadline = time.monotonic() + seconds
    for thread in threading.enumerate():
        if thread.name.startswith("StreamingExecutor-"):
            thread.join(max(0.0, deadline - time.monotonic()))
