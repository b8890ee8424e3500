"""The one batch path of the stages: a frame of pending units, cut into blocks, through
steps (`Tasks`: a function in CPU tasks; `Actors`: a callable model class in a pool that
`ray_pool.plan_pool` sized) and back as result batches (`ray_batches`), which `consume`
hands to the stage with a tqdm bar, flushing its resumable tables in a `finally` so an
interrupted run keeps what it wrote.

A model stage's load -> model -> write (`BatchSteps`) runs either on Ray Data
(`stream_ray`) or in this process (`stream_in_process`: threads for load and write, the
model in the caller's thread), with the same three functions and so the same outputs.
Ray pays a start-up of several seconds (worker processes that import torch, the streaming
executor); a run on one device that the start-up would dominate takes this process
(`choose_executor`)."""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, get_args

import pandas as pd

from pipeline.cluster.ray_pool import IO_CPUS, ModelPool, task_options
from pipeline.cluster.stall_watch import StallWatch
from pipeline.core.config import ExecutorName

EXECUTORS = get_args(ExecutorName)


def split_blocks(units: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    """`units` in blocks of `size` rows, in order: one block is one batch of every step."""
    return [units.iloc[i : i + size] for i in range(0, len(units), size)]


@dataclass(frozen=True)
class Tasks:
    """A step in Ray tasks: `fn(batch, **kwargs)`, each asking for `num_cpus`."""

    fn: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int | None = None  # None: one block per call
    batch_format: str = "numpy"
    num_cpus: float = IO_CPUS

    def apply(self, ds):
        return ds.map_batches(
            self.fn, batch_size=self.batch_size, batch_format=self.batch_format,
            fn_kwargs=self.kwargs, **task_options(self.num_cpus),
        )  # fmt: skip


@dataclass(frozen=True)
class Actors:
    """A step in `pool`'s actors: `cls(**kwargs, actors_per_node=...)` built once per
    actor, then called on each batch."""

    cls: type
    pool: ModelPool
    kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int | None = None  # None: one block per call
    batch_format: str = "numpy"

    def apply(self, ds):
        return self.pool.map(ds, self.cls, self.batch_size, self.batch_format, **self.kwargs)


def ray_batches(
    units: pd.DataFrame, batch_size: int, steps: Sequence[Tasks | Actors]
) -> Iterator[pd.DataFrame]:
    """The result batches of `units` (in blocks of `batch_size`) through `steps` on Ray
    Data, as pandas frames, in the order Ray finishes them."""
    import ray

    ds = ray.data.from_pandas(split_blocks(units, batch_size))
    for step in steps:
        ds = step.apply(ds)
    yield from ds.iter_batches(batch_size=None, batch_format="pandas")


def consume(
    parts: Iterable[pd.DataFrame],
    *,
    total: int,
    label: str,
    unit: str,
    handle: Callable[[pd.DataFrame], int] | None = None,
    outputs: Sequence = (),
    progress: bool = True,
    stall_timeout: float | None = None,
) -> int:
    """Hand each result batch to `handle`, which returns how many units it finished (by
    default: the batch goes to the one resumable table of `outputs`, each row a unit), on a
    tqdm bar of `total` `unit`s. `outputs` are flushed however the loop ends, so an
    interrupted run keeps every batch it received; a stall of `stall_timeout` seconds
    without a batch ends it with StalledError (`StallWatch`). Returns the units finished."""
    from tqdm import tqdm

    def add(part: pd.DataFrame) -> int:
        outputs[0].add(part)
        return len(part)

    done = 0
    try:
        with (
            StallWatch(stall_timeout, label) as watch,
            tqdm(total=total, desc=label, unit=unit, disable=not progress) as bar,
        ):
            for part in parts:
                watch.beat()
                n = int((handle or add)(part))
                bar.update(n)
                done += n
    finally:
        for output in outputs:
            output.flush()
    return done


def run_batches(
    units: pd.DataFrame, batch_size: int, steps: Sequence[Tasks | Actors], **how: Any
) -> int:
    """`units` through `steps` on Ray Data (`ray_batches`), each result batch handed on by
    `consume` (`how`: its label, unit, handle, outputs, progress and stall timeout);
    returns the units finished."""
    return consume(ray_batches(units, batch_size, steps), total=len(units), **how)


@dataclass(frozen=True)
class BatchSteps:
    """A CPU `load` per block, the callable model class `model_cls` (built once, takes
    `actors_per_node`), a CPU `write` per block that returns the block's rows."""

    load: Callable[..., dict]
    model_cls: type
    write: Callable[..., pd.DataFrame]
    batch_size: int
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    write_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Executor:
    name: str  # "ray" or "in_process"
    reason: str  # why, for the stage's notes


def choose_executor(setting: str, jobs: int, max_in_process: int | None,
                    concurrency: int | None, address: str | None,
                    models: bool = True) -> Executor:  # fmt: skip
    """`auto`: this process when the work stays on this machine (no cluster address, one
    Ray node if Ray is up, at most one GPU for work that runs `models`, no actor count
    asked for) and there are at most `max_in_process` jobs (None: any number); else Ray."""
    from pipeline.cluster.runtime import available_gpus, cpu_nodes

    if setting != "auto":
        return Executor(setting, f"{setting} as configured")
    # Not imported, Ray is not up here: importing it only to ask costs a second.
    ray = sys.modules.get("ray")
    address = address or os.environ.get("RAY_ADDRESS")
    # Counting GPUs without Ray imports torch (seconds): only where a model would use them.
    gpus = available_gpus() if models else 0
    blockers = [
        (address, f"a cluster address ({address})"),
        (ray is not None and ray.is_initialized() and cpu_nodes() > 1, "a multi-node Ray cluster"),
        (gpus > 1, f"{gpus} GPUs"),
        (concurrency is not None and concurrency > 1, f"{concurrency} model actors asked for"),
        (max_in_process is not None and jobs > max_in_process, f"{jobs} jobs > {max_in_process}"),
    ]
    why = [text for blocked, text in blockers if blocked]
    if why:
        return Executor("ray", "Ray: " + ", ".join(why))
    cap = "" if max_in_process is None else f" <= {max_in_process}"
    return Executor(
        "in_process",
        f"in this process ({jobs} jobs{cap} on one machine and device): no Ray worker start-up",
    )


def as_numpy_batch(block: pd.DataFrame) -> dict[str, Any]:
    """A block as Ray Data's numpy batch format hands it over: one array per column."""
    return {column: block[column].to_numpy() for column in block.columns}


def map_ahead(
    pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterable, window: int
) -> Iterator[Any]:
    """`fn` of each item in `pool`, in order, with at most `window` items taken from
    `items` ahead of the result handed on (Executor.map takes them all at once); while
    the caller works on a result, `window` - 1 run."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def stream_in_process(units: pd.DataFrame, steps: BatchSteps) -> Iterator[pd.DataFrame]:
    """Rows of each block of `units` in order. Loading runs ahead and writing behind the
    model in threads (JPEG codecs, zlib and torch release the GIL), at most a few blocks
    apart."""
    threads = max(1, min(8, (os.cpu_count() or 1) // 2))
    model = steps.model_cls(**steps.model_kwargs, actors_per_node=1)
    writes: deque[Future] = deque()
    with ThreadPoolExecutor(threads) as loaders, ThreadPoolExecutor(threads) as writers:

        def load(block: pd.DataFrame) -> dict:
            return steps.load(as_numpy_batch(block), **steps.load_kwargs)

        # threads + 1 blocks load while the model runs on one.
        for batch in map_ahead(loaders, load, split_blocks(units, steps.batch_size), threads + 2):
            written = model(batch)
            writes.append(writers.submit(steps.write, written, **steps.write_kwargs))
            while writes and (writes[0].done() or len(writes) > 2 * threads):
                yield writes.popleft().result()
        while writes:
            yield writes.popleft().result()


def stream_ray(units: pd.DataFrame, steps: BatchSteps, pool: ModelPool) -> Iterator[pd.DataFrame]:
    """Rows of each block of `units` as Ray Data finishes them: load and write in CPU
    tasks, the model in `pool` (`ray_pool.plan_pool`). One block per batch: each block is
    one load task, one forward and one write task."""
    size = steps.batch_size
    yield from ray_batches(units, size, [
        Tasks(steps.load, steps.load_kwargs, size),
        Actors(steps.model_cls, pool, steps.model_kwargs, size),
        Tasks(steps.write, steps.write_kwargs, size),
    ])  # fmt: skip
