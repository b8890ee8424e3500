"""A stage that stops making progress says what it waits for and exits (issue 22, item 6).

The pure core: `consume` over batches that stop coming raises StalledError after
`stall_timeout` seconds and keeps the batches it got. The Ray path, in a Ray of its own
(a stalled Ray Data run holds its resources until its process ends): a model pool that
holds the only CPU starves the tasks that feed it, which is how a shrinking cluster hung;
the watchdog names Ray's pending demand, and the pool `plan_pool` sizes leaves half the
node to its feeders, so the same work finishes."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cluster.batch_stream import consume
from pipeline.core.errors import StalledError

REPO = Path(__file__).resolve().parent.parent


class Sink:
    """A resumable output's add/flush, in memory."""

    def __init__(self):
        self.added, self.flushed = [], 0

    def add(self, part):
        self.added.append(part)

    def flush(self):
        self.flushed += 1


def test_batches_that_stop_coming_end_in_a_stall_error_keeping_what_came():
    never = threading.Event()

    def parts():
        yield pd.DataFrame({"x": [1, 2]})
        never.wait()  # a Ray Data iterator that waits for a CPU nobody frees

    sink = Sink()
    with pytest.raises(
        StalledError, match=r"demo: no batch finished in 1 s \(ray.stall_timeout_s\)"
    ):
        consume(parts(), total=4, label="demo", unit="img", outputs=[sink], progress=False,
                stall_timeout=1)  # fmt: skip
    assert [len(p) for p in sink.added] == [2] and sink.flushed == 1
    never.set()


def test_the_watch_stops_a_loop_whatever_sigint_handler_a_library_left_behind():
    """Ray Train installs a SIGINT handler of its own for a run; the watch still raises
    StalledError, and the handler found is back afterwards."""
    never = threading.Event()
    calls = []

    def foreign(signum, frame):
        calls.append(signum)

    def parts():
        yield pd.DataFrame({"x": [1]})
        never.wait()

    before = signal.signal(signal.SIGINT, foreign)
    try:
        with pytest.raises(StalledError):
            consume(parts(), total=2, label="t", unit="img", outputs=[Sink()], progress=False,
                    stall_timeout=1)  # fmt: skip
        assert signal.getsignal(signal.SIGINT) is foreign and calls == []
    finally:
        signal.signal(signal.SIGINT, before)
        never.set()


def test_errors_and_the_end_of_the_batches_pass_through_the_watch():
    def failing():
        yield pd.DataFrame({"x": [1]})
        raise ZeroDivisionError("a bug in a batch")

    sink = Sink()
    with pytest.raises(ZeroDivisionError, match="a bug in a batch"):
        consume(failing(), total=2, label="t", unit="img", outputs=[sink], progress=False,
                stall_timeout=30)  # fmt: skip
    assert len(sink.added) == 1 and sink.flushed == 1
    done = consume(iter([pd.DataFrame({"x": [1, 2, 3]})]), total=3, label="t", unit="img",
                   outputs=[Sink()], progress=False, stall_timeout=30)  # fmt: skip
    assert done == 3


STARVED = """
import sys, time
import pandas as pd
from pipeline.cluster.batch_stream import Actors, Tasks, run_batches
from pipeline.cluster.ray_pool import ModelPool, plan_pool
from pipeline.cluster.runtime import init_ray
from pipeline.core.config import RayConfig
from pipeline.core.errors import StalledError

def load(batch):
    return batch

class Model:
    def __init__(self, actors_per_node):
        pass
    def __call__(self, batch):
        return batch

init_ray(RayConfig(num_cpus=1))
units = pd.DataFrame({"x": range(8)})
# The pool of a node that lost its neighbours: its actor holds the node's only CPU.
pool = ModelPool(1, 0.0, 1.0, 1) if sys.argv[1] == "holding" else plan_pool(None)
print("pool cpus", pool.num_cpus, flush=True)
start = time.monotonic()
try:
    done = run_batches(units, 2, [Tasks(load, {}, 2), Actors(Model, pool, {}, 2)],
                       label="starved", unit="row", handle=len, progress=False,
                       stall_timeout=float(sys.argv[2]))
    print("finished", done)
except StalledError as exc:
    print(f"after {time.monotonic() - start:.0f} s:", exc)
    sys.exit(2)
"""


@pytest.mark.parametrize("pool", ["holding", "planned"])
def test_a_pool_that_holds_the_last_cpu_stalls_and_the_planned_pool_finishes(pool):
    proc = subprocess.run(
        # The planned pool gets time for its actor to start on a loaded machine.
        [sys.executable, "-c", STARVED, pool, "8" if pool == "holding" else "180"],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    if pool == "holding":
        assert proc.returncode == 2, out[-3000:]
        assert "starved: no batch finished in 8 s" in out
        # Ray's pending demand is the feeding task's half CPU, and nothing is free.
        assert "[1 {'CPU': 0.5}]" in out and "CPU 0 of 1" in out, out[-3000:]
    else:
        assert proc.returncode == 0, out[-3000:]
        assert "pool cpus 0.5" in out and "finished 8" in out
