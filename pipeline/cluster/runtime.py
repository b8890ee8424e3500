"""Ray runtime: one place that starts or joins Ray, sets resources and detects GPUs, and
the test-only fault hooks that Ray workers honour."""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from typing import Any

from pipeline.core import storage
from pipeline.core.config import RayConfig
from pipeline.core.errors import ConfigError

# glibc returns freed memory to the OS eagerly and serves MB-sized arrays with mmap, so
# per-image numpy work (SSIM windows, map decoding) page-faults its buffers in again and
# again: skimage's SSIM measured 8.8 ms/pair in a fresh process, 3.0 ms with these settings.
# Workers keep up to 128 MB of freed heap instead.
WORKER_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(64 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(128 << 20),
}


# Package folders shipped to Ray workers: the whole pipeline/ (this module's grandparent),
# and those that register themselves (stages/ does), so the library never imports what
# builds on it.
SHIPPED_PACKAGES: set[str] = {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}


def ship_package(package_dir: str) -> None:
    SHIPPED_PACKAGES.add(os.path.abspath(package_dir))


def init_ray(ray_cfg: RayConfig | None = None) -> dict[str, float]:
    """Start a local Ray (default) or join `ray_cfg.address` / $RAY_ADDRESS; reuse an
    existing session. Returns the cluster resources."""
    import ray

    ray_cfg = ray_cfg or RayConfig()
    if not ray.is_initialized():
        address = ray_cfg.address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = dict(
            include_dashboard=False,
            log_to_driver=True,
            configure_logging=False,
            ignore_reinit_error=True,
        )
        # Ship this checkout's code to every worker, so workers on other nodes (and
        # local workers of a second checkout) run the same code as the driver.
        # The test hooks travel too: workers on other nodes do not inherit the driver's env.
        hooks = {k: os.environ[k] for k in HOOK_ENVS if os.environ.get(k)}
        kwargs["runtime_env"] = {
            "py_modules": sorted(SHIPPED_PACKAGES),
            "env_vars": {**WORKER_MALLOC_ENV, **hooks, **storage.worker_env()},
            "worker_process_setup_hook": "pipeline.cluster.worker_setup.join_own_cluster",
        }
        # Workers log errors only (all levels with --verbose): Ray Train's controller actors
        # otherwise print a line every few seconds. Stages report to the driver instead.
        root = logging.getLogger()
        level, handlers = root.level, list(root.handlers)
        worker_level = "DEBUG" if level <= logging.DEBUG else "ERROR"
        kwargs["logging_config"] = ray.LoggingConfig(log_level=worker_level)
        try:
            if address:
                try:
                    ray.init(address=address, **kwargs)
                except ConnectionError as exc:
                    raise ConfigError(refused_hint(address, exc)) from exc
            else:
                # "local": without it Ray joins the cluster named in /tmp/ray's address
                # file (the last `ray start` on this host), which on a shared host may be
                # anyone's.
                ray.init(
                    address="local", num_cpus=ray_cfg.num_cpus, num_gpus=ray_cfg.num_gpus, **kwargs
                )
        finally:  # the driver keeps the CLI's logging set-up
            root.handlers[:] = handlers
            root.setLevel(level)
        _quiet_ray_data()
    return ray.cluster_resources()


def refused_hint(address: str, exc: Exception) -> str:
    """What to check when a cluster refuses the driver: Ray 2.60's heads turn token
    authentication on when ~/.ray/auth_token exists, and a driver given an explicit
    address only uses it with RAY_AUTH_MODE=token."""
    mode = os.environ.get("RAY_AUTH_MODE", "unset")
    return (
        f"could not join the Ray cluster at {address} ({exc}). Check that the head runs "
        f"and is reachable; if it uses token authentication, run with RAY_AUTH_MODE=token "
        f"and the head's token in ~/.ray/auth_token or RAY_AUTH_TOKEN (RAY_AUTH_MODE is "
        f"{mode} here). See README, 'Cluster and GPU use'."
    )


def _quiet_ray_data() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    # Progress bars come from our own tqdm per stage; Ray's per-operator bars flood logs.
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def available_gpus() -> int:
    """GPUs in the Ray cluster when Ray is up, else on this machine."""
    try:
        import ray

        if ray.is_initialized():
            return int(ray.cluster_resources().get("GPU", 0))
    except ImportError:
        pass
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def node_cpus() -> int:
    """CPUs of the Ray node this process runs on (its own machine outside Ray): torch
    threads are sized from the node an actor landed on, never from the driver's host or
    the cluster total."""
    try:
        import ray

        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
            for info in ray.nodes():
                if info["NodeID"] == node:
                    return max(1, int(info["Resources"].get("CPU", 1)))
    except ImportError:
        pass
    return max(1, len(os.sched_getaffinity(0)))


def current_node() -> str | None:
    """The Ray node id this process runs on (None outside Ray): stages record it beside
    the rows each actor or task made, to show how work spread over a cluster."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def cpu_node_sizes() -> list[int]:
    """CPUs of each alive node that has at least one."""
    import ray

    cpus = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"]]
    return [c for c in cpus if c >= 1]


def largest_node_cpus() -> int:
    """The most CPUs one alive node has: no single actor or worker may ask for more."""
    return max([1, *cpu_node_sizes()])


def cpu_nodes() -> int:
    """Alive nodes with CPUs: CPU model actors spread one per node by default."""
    return max(1, len(cpu_node_sizes()))


def smallest_node_cpus() -> int:
    """The fewest CPUs a node with CPUs has: a CPU actor planned for every node must fit
    there beside the tasks that feed it."""
    return min(cpu_node_sizes() or [1])


def waiting_for() -> str:
    """What Ray waits for, as `ray status` shows it: the pending resource demands of tasks
    and actors, and what the alive nodes have free. Empty outside Ray."""
    ray = sys.modules.get("ray")  # not imported: no Ray in this process
    if ray is None or not ray.is_initialized():
        return ""
    from ray.autoscaler.v2.sdk import get_cluster_status

    demands = get_cluster_status(ray.get_runtime_context().gcs_address).resource_demands
    pending = [str(b) for d in demands.ray_task_actor_demand for b in d.bundles_by_count]
    free, total = ray.available_resources(), ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n["Alive"])
    have = ", ".join(
        f"{k} {free.get(k, 0):g} of {total[k]:g}" for k in ("CPU", "GPU") if total.get(k)
    )
    return (
        f"pending demands (count and resources per task or actor): "
        f"{'; '.join(pending) or 'none'}; free on {nodes} alive node(s): {have or 'nothing'}"
    )


def package_versions() -> dict[str, str]:
    """Versions of the packages results depend on, for run manifests and reports."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in (
        "torch",
        "torchvision",
        "ray",
        "openpifpaf-vita",
        "pyarrow",
        "pandas",
        "numpy",
        "scikit-image",
        "lpips",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def best_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --- test-only fault hooks --------------------------------------------------------------
# POSE_PIPELINE_FAULT=<stage>:<n> makes the worker that handles its n-th batch of <stage>
# exit abruptly, once (POSE_PIPELINE_FAULT_MARKER records that it happened), so tests can
# prove a stage survives a killed worker. POSE_PIPELINE_BATCH_DELAY=<stage>:<seconds>
# makes every batch of <stage> take that much longer and append the node it runs on to
# POSE_PIPELINE_BATCH_LOG, so a test can remove a node while it surely holds work. Unset,
# they cost two dict lookups per batch.
FAULT_ENV, FAULT_MARKER_ENV = "POSE_PIPELINE_FAULT", "POSE_PIPELINE_FAULT_MARKER"
DELAY_ENV, DELAY_LOG_ENV = "POSE_PIPELINE_BATCH_DELAY", "POSE_PIPELINE_BATCH_LOG"
HOOK_ENVS = (FAULT_ENV, FAULT_MARKER_ENV, DELAY_ENV, DELAY_LOG_ENV)
_batches_seen: dict[str, int] = {}


def inject_fault(stage: str) -> None:
    delay = os.environ.get(DELAY_ENV)
    if delay and delay.partition(":")[0] == stage:
        if os.environ.get(DELAY_LOG_ENV):
            with open(os.environ[DELAY_LOG_ENV], "a") as fh:
                fh.write(f"{current_node()}\n")
        time.sleep(float(delay.partition(":")[2]))
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name != stage:
        return
    _batches_seen[stage] = _batches_seen.get(stage, 0) + 1
    marker = os.environ.get(FAULT_MARKER_ENV)
    if _batches_seen[stage] == int(nth or 1) and marker and not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write(f"{stage} batch {nth} killed pid {os.getpid()}\n")
        os._exit(17)
