"""The two ways a model stage streams its batches through load -> model -> write, with
the same three functions and so the same outputs: Ray Data (tasks for load and write, a
model actor pool over the cluster) or this process (threads for load and write, the model
in the caller's thread). Ray pays a start-up of several seconds (worker processes that
import torch, the streaming executor); a run on one device that the start-up would
dominate takes this process (`choose_executor`)."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, get_args

import pandas as pd

from pipeline.core.config import ExecutorName

EXECUTORS = get_args(ExecutorName)


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


def choose_executor(setting: str, jobs: int, max_in_process: int, concurrency: int | None,
                    address: str | None) -> Executor:  # fmt: skip
    """`auto`: this process when the work stays on this machine (no cluster address, one
    Ray node if Ray is up, at most one GPU, no actor count asked for) and there are at most
    `max_in_process` jobs; else Ray."""
    from pipeline.cluster.runtime import available_gpus, cpu_nodes

    if setting != "auto":
        return Executor(setting, f"{setting} as configured")
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    gpus = available_gpus()
    blockers = [
        (address, f"a cluster address ({address})"),
        (ray.is_initialized() and cpu_nodes() > 1, "a multi-node Ray cluster"),
        (gpus > 1, f"{gpus} GPUs"),
        (concurrency is not None and concurrency > 1, f"{concurrency} model actors asked for"),
        (jobs > max_in_process, f"{jobs} jobs > {max_in_process}"),
    ]
    why = [text for blocked, text in blockers if blocked]
    if why:
        return Executor("ray", "Ray: " + ", ".join(why))
    return Executor(
        "in_process",
        f"in this process ({jobs} jobs <= {max_in_process} on one machine and device): "
        "no Ray worker start-up",
    )


def as_numpy_batch(block: pd.DataFrame) -> dict[str, Any]:
    """A block as Ray Data's numpy batch format hands it over: one array per column."""
    return {column: block[column].to_numpy() for column in block.columns}


def stream_in_process(blocks: Iterable[pd.DataFrame], steps: BatchSteps) -> Iterator[pd.DataFrame]:
    """Rows of each block in order. Loading runs ahead and writing behind the model in
    threads (JPEG codecs, zlib and torch release the GIL), at most a few blocks apart."""
    threads = max(1, min(8, (os.cpu_count() or 1) // 2))
    model = steps.model_cls(**steps.model_kwargs, actors_per_node=1)
    todo = iter(blocks)
    loads: deque[Future] = deque()
    writes: deque[Future] = deque()
    with ThreadPoolExecutor(threads) as loaders, ThreadPoolExecutor(threads) as writers:

        def load_ahead() -> None:
            while len(loads) <= threads and (block := next(todo, None)) is not None:
                loads.append(loaders.submit(steps.load, as_numpy_batch(block), **steps.load_kwargs))

        load_ahead()
        while loads:
            batch = loads.popleft().result()
            load_ahead()
            written = model(batch)
            writes.append(writers.submit(steps.write, written, **steps.write_kwargs))
            while writes and (writes[0].done() or len(writes) > 2 * threads):
                yield writes.popleft().result()
        while writes:
            yield writes.popleft().result()


def stream_ray(blocks: list[pd.DataFrame], steps: BatchSteps, pool) -> Iterator[pd.DataFrame]:
    """Rows of each block as Ray Data finishes them: load and write in CPU tasks, the model
    in `pool` (`ray_pool.plan_pool`). One block per batch: each block is one load task,
    one forward and one write task."""
    import ray

    from pipeline.cluster.ray_pool import task_options

    ds = ray.data.from_pandas(blocks).map_batches(
        steps.load, batch_size=steps.batch_size, batch_format="numpy",
        fn_kwargs=steps.load_kwargs, **task_options(),
    )  # fmt: skip
    ds = pool.map(ds, steps.model_cls, steps.batch_size, **steps.model_kwargs)
    ds = ds.map_batches(
        steps.write, batch_size=steps.batch_size, batch_format="numpy",
        fn_kwargs=steps.write_kwargs, **task_options(),
    )  # fmt: skip
    yield from ds.iter_batches(batch_size=None, batch_format="pandas")
