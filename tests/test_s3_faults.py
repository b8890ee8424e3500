"""The S3 server dies in the middle of `generate` (SeaweedFS killed by its pid) and comes
back on the same data directory at another port: the rerun resumes and its images and
manifest equal those of an uninterrupted run on local disk, with no partial object and
no manifest row twice. Every run is a fresh process with its own Ray, which gets the
server's endpoint from the config alone (storage.endpoint_override), as a cluster's
workers would."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from s3_server import objects, put_tree, running_server
from test_pipeline_run import REPO, TINY, random_checkpoint

from pipeline.core import storage
from pipeline.synthetic.tree import GROUND_TRUTH_CSV, write_synthetic_tree

pytestmark = pytest.mark.slow

PREP = ["keypoints", "posemaps", "pairs"]
# Run once in a fresh process: the stages named, on the config's settings.
SCRIPT = """
import sys
from pipeline.core.config import load_config
from stages.dag import RunPlan, run_dag
rows = run_dag(load_config(sys.argv[1], sys.argv[3:]), RunPlan(sys.argv[2].split(",")))
sys.exit(0 if set(rows["status"]) <= {"ran", "skipped"} else 3)
"""
# Where two runs differ: the node, and what inputs are digested from (content locally,
# listings on S3).
MANIFEST_RUN_COLUMNS = ["node", "inputs"]


def _sets(data: str, out: str, ckpt: str, endpoint: str | None = None) -> list[str]:
    sets = [
        f"dataset.root={data}",
        f"output.root={out}",
        f"keypoints.annotations={GROUND_TRUTH_CSV}",
        "keypoints.compare=null",
        f"generate.checkpoints=[{ckpt}]",
        *TINY,
        "generate.batch_size=2",
    ]
    return sets + ([f"storage.endpoint_override={endpoint}"] if endpoint else [])


def _start(stages: list[str], sets: list[str], env: dict[str, str]) -> subprocess.Popen:
    config = str(REPO / "configs" / "demo.yaml")
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, config, ",".join(stages), *sets],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _run(stages: list[str], sets: list[str], env: dict[str, str]) -> str:
    proc = _start(stages, sets, env)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    return out


def _client_env(server) -> dict[str, str]:
    """The process environment with the server's credentials and no endpoint variable:
    the endpoint comes from the config only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return env | {k: v for k, v in server.env().items() if k != "AWS_ENDPOINT_URL"}


def test_generate_resumes_after_the_s3_server_was_killed(tmp_path):
    local = tmp_path / "data"
    write_synthetic_tree(local, identities=10, poses_per_identity=4, seed=5)
    ckpt = random_checkpoint(tmp_path / "netG_7.pth")
    env = dict(os.environ)
    _run([*PREP, "generate"], _sets(str(local), str(tmp_path / "out"), str(ckpt)), env)
    want = {
        f.rel: storage.read_bytes(f.path)
        for f in storage.list_files(tmp_path / "out" / "generated")
        if f.rel.endswith(".jpg")
    }
    want_manifest = pd.read_parquet(tmp_path / "out" / "generated" / "manifest.parquet")

    folder = tmp_path / "s3"
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(running_server(folder))
        client = server.filesystem()
        data, out = f"{server.bucket}/data", f"{server.bucket}/out"
        put_tree(client, local, data)
        env = _client_env(server)
        sets = _sets(f"s3://{data}", f"s3://{out}", str(ckpt), server.endpoint)
        _run(PREP, sets, env)

        # Generate slowly; once some images are in the bucket, kill the server.
        slow = env | {"POSE_PIPELINE_BATCH_DELAY": "generate:1"}
        proc = _start([*PREP, "generate"], sets, slow)
        deadline = time.monotonic() + 240
        made: list = []
        while time.monotonic() < deadline and proc.poll() is None and len(made) < 4:
            time.sleep(0.5)
            made = [rel for rel in objects(client, f"{out}/generated") if rel.endswith(".jpg")]
        assert proc.poll() is None and len(made) >= 4, (len(made), proc.poll())
        os.killpg(server.pid, signal.SIGKILL)
        said, _ = proc.communicate(timeout=300)
        assert proc.returncode != 0, said[-3000:]
        stack.close()  # the dead server's context: its stop() finds it gone

    with running_server(folder) as again:  # the same data directory, new ports
        assert again.endpoint != server.endpoint
        sets = _sets(f"s3://{data}", f"s3://{out}", str(ckpt), again.endpoint)
        said = _run([*PREP, "generate"], sets, _client_env(again))
        assert "[generate]" in said
        got = objects(again.filesystem(), f"{out}/generated")
        assert not any(".parts/" in rel for rel in got), sorted(got)
        assert {rel: b for rel, b in got.items() if rel.endswith(".jpg")} == want
        manifest = pd.read_parquet(io.BytesIO(got["manifest.parquet"]))
        assert not manifest.duplicated(["checkpoint", "direction", "index"]).any()
        pd.testing.assert_frame_equal(
            manifest.drop(columns=MANIFEST_RUN_COLUMNS),
            want_manifest.drop(columns=MANIFEST_RUN_COLUMNS),
        )
