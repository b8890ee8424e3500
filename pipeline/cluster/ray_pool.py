"""The one way the stages run work on Ray: Ray Data `map_batches`, with plain functions for
CPU tasks (decode, encode, pixel metrics) and callable classes for models, which load once
per actor. The model pool is sized from the cluster: one actor per GPU, else one per CPU
node; each actor sizes torch's threads from the node it landed on."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

# CPU tasks beside a model ask for half a logical CPU: two overlap a forward, and differing
# from the actors' share keeps Ray Data from fusing them into the (GPU) actors.
IO_CPUS = 0.5


@dataclass(frozen=True)
class ModelPool:
    size: int  # actors
    num_gpus: float  # per actor
    num_cpus: float  # per actor (a logical share; threads come from the node)
    actors_per_node: int  # torch threads = node CPUs // this

    def map(
        self,
        ds,
        model_cls: type,
        batch_size: int,
        batch_format: str = "numpy",
        **constructor_kwargs: Any,
    ):
        """`ds.map_batches(model_cls)` over this pool; `model_cls` takes `actors_per_node`."""
        from ray.data import ActorPoolStrategy

        # Small CPU actors would otherwise be packed onto the first nodes with room: one
        # per node is the plan, and torch's threads are sized for it.
        spread = {} if self.num_gpus else {"ray_remote_args_fn": _spread}
        # Ray 2.60 flags every per-call remote option as deprecated, and offers no named
        # parameter for a scheduling strategy yet: keep the warning out of users' output.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            return ds.map_batches(
                model_cls, batch_size=batch_size, batch_format=batch_format,
                compute=ActorPoolStrategy(size=self.size), num_gpus=self.num_gpus,
                num_cpus=self.num_cpus, fn_constructor_kwargs={
                    **constructor_kwargs, "actors_per_node": self.actors_per_node},
                **spread,
            )  # fmt: skip


def _spread() -> dict[str, Any]:
    return {"scheduling_strategy": "SPREAD"}


def plan_pool(concurrency: int | None, use_gpus: bool = True, num_cpus: float = 1.0) -> ModelPool:
    """One actor per GPU when the cluster has GPUs (and the model uses them), else one per
    CPU node; `concurrency` overrides the count. A CPU actor asks for at most half the
    smallest CPU node, so with one actor on every node each node still has room for the
    tasks that feed it (a whole 1-CPU node per actor left none: the stage hung)."""
    from pipeline.cluster.runtime import available_gpus, cpu_nodes, smallest_node_cpus

    gpus = available_gpus() if use_gpus else 0
    if gpus:
        size = concurrency or gpus
        return ModelPool(size, min(1.0, gpus / size), 1.0, 1)
    nodes = cpu_nodes()
    size = concurrency or nodes
    share = min(num_cpus, smallest_node_cpus() / 2)
    return ModelPool(size, 0.0, share, max(1, -(-size // nodes)))


def use_node_threads(actors_per_node: int) -> int:
    """Give torch this actor's share of its node's cores (Ray pins workers to one thread)."""
    import torch

    from pipeline.cluster.runtime import node_cpus

    threads = max(1, node_cpus() // max(1, actors_per_node))
    torch.set_num_threads(threads)
    return threads


def task_options(num_cpus: float = IO_CPUS) -> dict[str, Any]:
    """map_batches options of a CPU task beside a model pool."""
    return {"num_cpus": num_cpus}
