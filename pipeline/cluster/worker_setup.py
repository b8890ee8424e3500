"""Run by Ray in every worker process of the pipeline's jobs before its first task (the
runtime_env's worker_process_setup_hook, set by runtime.init_ray). It imports nothing of
the pipeline: every worker process pays for what it imports."""

from __future__ import annotations

import os

# A port no server can listen on: the state API client fails at once, without a connection.
NO_API_SERVER = "http://127.0.0.1:65536"


def join_own_cluster() -> None:
    """Point Ray's state API in this worker at the cluster the worker belongs to.

    Ray Train 2.60's PlacementGroupCleaner asks the state API every few seconds whether
    the run's controller is alive, and removes the run's placement group (its workers)
    when the answer is no. Given no address, the state API looks for a Ray on the host:
    with two there (another user's, a test cluster) it raised "Found multiple active Ray
    instances", a traceback in the middle of training output, or asked the one last
    started with `ray start`. RAY_ADDRESS names this worker's own cluster.

    A minimal Ray install (no aiohttp, as requirements.txt has it) serves no state API at
    all, yet records the default dashboard address, 127.0.0.1:8265, where another Ray's
    dashboard may listen and answer that our controller does not exist. There the state
    API is pointed at an address that fails at once: the cleaner takes that as "state
    unknown" and keeps watching, as it does on a host with one Ray."""
    import ray
    from ray._private.utils import get_dashboard_dependency_error

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    # The cleaner runs on the head node, whose install decides whether it serves the API.
    if get_dashboard_dependency_error() is not None:
        os.environ["RAY_API_SERVER_ADDRESS"] = NO_API_SERVER
