"""The train driver's Ray side: how many CPUs, GPUs and loader processes each Ray Train
worker gets, and the progress board rank 0 posts to while the driver shows a bar and an ETA."""

from __future__ import annotations

import sys
import threading
import time

from pipeline.cluster.runtime import available_gpus
from pipeline.core.config import ConfigError, TrainConfig
from pipeline.core.errors import PipelineError
from pipeline.training.resources import ClusterResources, use_gpu, worker_cpus


def progress_board():
    import ray

    @ray.remote(num_cpus=0)
    class ProgressBoard:
        """Rank 0 posts its iteration; the driver's tqdm polls it."""

        def __init__(self):
            self.iteration = 0

        def update(self, iteration: int) -> None:
            self.iteration = iteration

        def get(self) -> int:
            return self.iteration

    return ProgressBoard.remote()


def show_progress(board, start: int, total: int, done: threading.Event) -> None:
    """A tqdm bar, and once the first iterations are timed, one line with the time per
    iteration and the minutes left (the bar's own ETA is hidden in logs without a tty)."""
    import ray
    from tqdm import tqdm

    timed_from: tuple[int, float] | None = None
    told = False
    with tqdm(total=total, initial=start, desc="train", unit="it", mininterval=2) as bar:
        while not done.wait(2.0):
            now = ray.get(board.get.remote())
            bar.update(max(0, now - bar.n))
            # The first iterations pay the process group and data set-up: time from the
            # second one seen, over at least 5 iterations.
            if timed_from is None and now > start:
                timed_from = (now, time.perf_counter())
            elif timed_from and not told and now - timed_from[0] >= 5:
                per_it = (time.perf_counter() - timed_from[1]) / (now - timed_from[0])
                bar.write(
                    f"    train: {per_it:.2f} s/iteration, about {per_it * (total - now) / 60:.1f} "
                    f"min for the remaining {total - now} iterations"
                )
                sys.stdout.flush()  # a pipe or a log file would hold it back until the end
                told = True
        bar.update(max(0, ray.get(board.get.remote()) - bar.n))


def use_gpu_for(tc: TrainConfig) -> bool:
    if tc.use_gpu == "yes" and available_gpus() == 0:
        raise ConfigError("train.use_gpu: yes, but the Ray cluster has no GPU; use auto or no")
    return use_gpu(tc, available_gpus())


def cpus_per_worker(tc: TrainConfig, gpu: bool) -> int:
    """CPUs of each Ray Train worker on the cluster this process is connected to."""
    return worker_cpus(tc, gpu, ClusterResources.from_ray())


def loader_workers_for(tc: TrainConfig, cpus: int) -> int:
    """DataLoader processes per worker for a streamed set: one when the cluster has a CPU
    beyond the workers' share for each worker; on a saturated machine a decoding process
    only takes time from torch's threads."""
    import ray

    if tc.loader_workers is not None:
        return tc.loader_workers
    spare = int(ray.cluster_resources().get("CPU", 1)) - tc.num_workers * cpus
    return 1 if spare >= tc.num_workers else 0


def worker_input_error(exc: BaseException) -> PipelineError | None:
    """The input error (a full disk, an unusable file) a Ray Train worker failed with, lowest
    rank first: Ray Train reports it inside a WorkerGroupError whose message is the
    worker's traceback, and the user should read the plain message."""
    failures = getattr(exc, "worker_failures", None) or {}
    for rank in sorted(failures):
        error = failures[rank]
        # A RayTaskError keeps what the code raised as its cause.
        for candidate in (error, getattr(error, "cause", None)):
            if isinstance(candidate, PipelineError):
                return candidate
    return None
