"""What a training run asks of the Ray cluster, and whether the cluster can give it. Ray
Train waits for a worker group that cannot be placed and retries its start (about seven
60-second tries), so a run asking for more than the cluster has is refused before that."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.config import Config, TrainConfig


@dataclass(frozen=True)
class ClusterResources:
    """The CPUs and GPUs of each alive node of a Ray cluster."""

    nodes: tuple[tuple[float, float], ...]  # (CPU, GPU) per alive node

    @property
    def cpus(self) -> float:
        return sum(cpu for cpu, _ in self.nodes)

    @property
    def gpus(self) -> float:
        return sum(gpu for _, gpu in self.nodes)

    @property
    def largest_node_cpus(self) -> float:
        return max((cpu for cpu, _ in self.nodes), default=0)

    @classmethod
    def from_ray(cls) -> ClusterResources:
        """The cluster this process is connected to (Ray must be initialised)."""
        import ray

        return cls(
            tuple(
                (float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
                for n in ray.nodes()
                if n["Alive"]
            )
        )


@dataclass(frozen=True)
class TrainResources:
    """The Ray Train worker group a run asks for: `workers` bundles of this many CPUs and
    GPUs each."""

    workers: int
    cpus_per_worker: int
    gpus_per_worker: int
    cpus_set: bool = False  # train.cpus_per_worker was given, not derived from the cluster


def use_gpu(tc: TrainConfig, cluster_gpus: float) -> bool:
    """train.use_gpu against the cluster's GPUs ("yes" without one is refused elsewhere)."""
    if tc.use_gpu == "auto":
        return cluster_gpus > 0
    return tc.use_gpu == "yes"


def worker_cpus(tc: TrainConfig, gpu: bool, cluster: ClusterResources) -> int:
    """CPU workers share the cluster's CPUs evenly (Ray sets each worker's torch threads
    to its CPU count); GPU workers keep one CPU each for feeding the GPU."""
    if tc.cpus_per_worker is not None:
        return tc.cpus_per_worker
    if gpu:
        return 1
    # A worker fits on one node: never more CPUs than the largest node has.
    share = int(cluster.cpus or 1) // tc.num_workers
    return max(1, min(share, int(cluster.largest_node_cpus) or 1))


def train_resources(tc: TrainConfig, cluster: ClusterResources) -> TrainResources:
    gpu = use_gpu(tc, cluster.gpus)
    return TrainResources(
        workers=tc.num_workers,
        cpus_per_worker=worker_cpus(tc, gpu, cluster),
        gpus_per_worker=1 if gpu else 0,
        cpus_set=tc.cpus_per_worker is not None,
    )


def _plural(n: float, word: str) -> str:
    n = int(n) if float(n).is_integer() else n
    return f"{n} {word}{'' if n == 1 else 's'}"


def resource_problem(asked: TrainResources, cluster: ClusterResources) -> str | None:
    """Why the cluster cannot place the worker group `asked` (None when it can). Each
    worker is a bundle that must fit on one node, so this counts the bundles each node
    holds rather than comparing totals only."""
    fits = 0
    for cpu, gpu in cluster.nodes:
        by_cpu = int(cpu // asked.cpus_per_worker)
        by_gpu = int(gpu // asked.gpus_per_worker) if asked.gpus_per_worker else by_cpu
        fits += min(by_cpu, by_gpu)
    if fits >= asked.workers:
        return None
    each = _plural(asked.cpus_per_worker, "CPU") + (
        f" and {_plural(asked.gpus_per_worker, 'GPU')}" if asked.gpus_per_worker else ""
    )
    total = _plural(asked.workers * asked.cpus_per_worker, "CPU") + (
        f", {_plural(asked.workers * asked.gpus_per_worker, 'GPU')}"
        if asked.gpus_per_worker
        else ""
    )
    has = f"{_plural(cluster.cpus, 'CPU')}" + (
        f" and {_plural(cluster.gpus, 'GPU')}" if asked.gpus_per_worker else ""
    )
    largest = cluster.largest_node_cpus
    where = (
        "one node"
        if len(cluster.nodes) == 1
        else f"{_plural(len(cluster.nodes), 'node')}, the largest with {_plural(largest, 'CPU')}"
    )
    if fits == 0:
        fix = (
            "Lower train.cpus_per_worker"
            if asked.cpus_per_worker > largest
            else "Set train.use_gpu: no"
        )
        return (
            f"train.num_workers = {asked.workers} asks for {_plural(asked.workers, 'worker')} "
            f"of {each} each ({total}), but not even one fits: the Ray cluster has {has} on "
            f"{where}, and each worker must fit on one node. {fix}, or "
            "join a larger cluster with --address."
        )
    knob = " (or train.cpus_per_worker)" if asked.cpus_set and asked.cpus_per_worker > 1 else ""
    return (
        f"train.num_workers = {asked.workers} asks for {_plural(asked.workers, 'worker')} "
        f"of {each} each ({total}), but the Ray cluster has {has} on {where}: at most "
        f"{fits} such worker{'' if fits == 1 else 's'} fit. Set train.num_workers to {fits} "
        f"or less{knob}, or join a larger cluster with --address."
    )


def check_train_resources(cfg: Config | TrainConfig, cluster: ClusterResources) -> str | None:
    """Why `cluster` cannot run the training `cfg` asks for, or None. Pure: a preflight
    can call it with ClusterResources.from_ray() before any stage writes."""
    tc = cfg.train if isinstance(cfg, Config) else cfg
    if tc.use_gpu == "yes" and cluster.gpus == 0:
        return "train.use_gpu: yes, but the Ray cluster has no GPU; use auto or no"
    return resource_problem(train_resources(tc, cluster), cluster)
