"""Multi-node Ray: a real cluster on this machine (`ray.cluster_utils.Cluster`: a head and
two worker nodes, each with its own CPU count and custom resource). The stages run as the
CLI with --address, as users run them against a cluster, and must write the bytes a local
run writes, spread their work over the nodes (each stage records the node of each row),
size every actor from the node it landed on, and finish when a worker node is lost."""

from __future__ import annotations

import fnmatch
import io
import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch
from s3_server import RequestLog, objects, put_tree
from test_pipeline_run import finish, run_cli

from pipeline.generator.generation_plan import MANIFEST_KEY
from pipeline.generator.networks import build_generator
from pipeline.synthetic.tree import write_synthetic_tree

REPO = Path(__file__).resolve().parent.parent
NODE_CPUS = {"head": 1, "w1": 1, "w2": 2}  # logical CPUs; w2 shows sizing by node
SETS = [
    "keypoints.estimator=mediapipe",
    "keypoints.batch_size=2",
    "keypoints.compare=null",
    "posemaps.batch_size=8",
    "generate.ngf=4",
    # Small batches: enough of them that every node's actor gets some before one finishes all.
    "generate.batch_size=2",
    "evaluate.metrics=[ssim,psnr,lpips_alex]",
    "evaluate.network_weights=random",
    "evaluate.batch_size=8",
    "evaluate.pixel_batch_size=8",
]

pytestmark = pytest.mark.slow


def start_node(cluster, name: str):
    """A node (the first one added is the head) with its CPUs and a resource of its name."""
    return cluster.add_node(
        num_cpus=NODE_CPUS[name], resources={name: 1}, object_store_memory=100 << 20
    )


@pytest.fixture(scope="module")
def cluster(s3_server):
    """Three nodes on this machine, apart from any local Ray of this process. Each node has
    the test S3 server's credentials in its environment, as cloud nodes have their role's;
    the endpoint reaches the workers from the driver's config."""
    import ray._private.utils
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as patch:
        # Cluster records its address in /tmp/ray's address file, where a plain ray.init()
        # of any process on this shared host would then find and join it.
        patch.setattr(ray._private.utils, "write_ray_address", lambda *a, **k: None)
        for name, value in s3_credentials(s3_server).items():
            patch.setenv(name, value)
        c = Cluster(initialize_head=False)
        start_node(c, "head")
        workers = {n: start_node(c, n) for n in ("w1", "w2")}
        c.wait_for_nodes()
    c.workers = workers
    yield c
    c.shutdown()


def s3_credentials(server) -> dict[str, str]:
    return {k: v for k, v in server.env().items() if k != "AWS_ENDPOINT_URL"}


def node_ids(cluster) -> dict[str, str]:
    """Node name (head, w1, w2) -> Ray node id of the alive nodes."""
    out = {"head": cluster.head_node.node_id}
    out.update({n: node.node_id for n, node in cluster.workers.items()})
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("cluster")
    write_synthetic_tree(base / "data", identities=8, poses_per_identity=4, seed=11)
    torch.manual_seed(0)
    ckpt = base / "ckpt" / "netG_3.pth"
    ckpt.parent.mkdir()
    torch.save(build_generator(4).state_dict(), ckpt)
    return base / "data", ckpt


def overrides(root: Path | str, out: Path | str, ckpt: Path | str) -> list[str]:
    return [
        f"dataset.root={root}",
        f"output.root={out}",
        f"generate.checkpoints=[{ckpt}]",
        *SETS,
    ]


def cli(args: list[str], sets: list[str], address: str | None, env: dict | None = None):
    """The CLI as a user starts it (a subprocess per stage), against `address`."""
    argv = [*args, "--config", str(REPO / "configs" / "demo.yaml")]
    argv += sum((["--set", s] for s in sets), [])
    return run_cli(argv + (["--address", address] if address else []), env_extra=env)


def run_all(root: Path, out: Path, ckpt: Path, address: str | None, env: dict | None = None) -> str:
    """The `run` DAG (train left out: generate.checkpoints is set), keypoints estimated."""
    return finish(cli(["run"], overrides(root, out, ckpt), address, env), timeout=400)


def files(root: Path, *patterns: str) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for pattern in patterns
        for p in sorted(root.rglob(pattern))
    }


LEGACY = ("*.csv", "*.npz", "*.jpg", "pose_maps.json")
# Scores of networks with random, unseeded weights differ from run to run.
RANDOM_SCORES = "lpips_score.csv"


@pytest.fixture(scope="module")
def local_run(source, tmp_path_factory) -> Path:
    """The same stages on one local Ray node."""
    base = tmp_path_factory.mktemp("local")
    root = shutil.copytree(source[0], base / "data")
    run_all(root, base / "out", source[1], None)
    return base


def test_stages_on_three_nodes_equal_a_local_run_and_use_every_node(
    cluster, source, local_run, tmp_path
):
    root = shutil.copytree(source[0], tmp_path / "data")
    # BlazePose estimates a batch in a blink: without a pause per batch, the first actor
    # ready estimates every batch before the other nodes' actors have loaded the model.
    slow = {"POSE_PIPELINE_BATCH_DELAY": "keypoints:1"}
    run_all(root, tmp_path / "out", source[1], cluster.address, slow)
    for a, b in ((local_run / "data", root), (local_run / "out", tmp_path / "out")):
        want, got = files(a, *LEGACY), files(b, *LEGACY)
        assert want.keys() == got.keys()
        assert [k for k in want if want[k] != got[k] and not k.endswith(RANDOM_SCORES)] == []
    # Each stage's own records say which node made each row: all three took part.
    nodes = set(node_ids(cluster).values())
    per_image = pd.read_parquet(
        tmp_path / "out" / "evaluation" / "per_image" / "lpips_alex.parquet"
    )
    out = tmp_path / "out"
    records = {
        "keypoints": pd.read_parquet(root / "tables" / "keypoints.parquet"),
        "posemaps": pd.read_parquet(root / "tables" / "posemaps_index.parquet"),
        "generate": pd.read_parquet(out / "generated" / "manifest.parquet"),
        "evaluate": per_image,
    }
    for stage, table in records.items():
        used = set(table["node"].dropna())
        # A metric's few batches may all reach one actor of its spread pool: evaluate has to
        # record real nodes, the stages with many batches have to use several.
        assert used <= nodes and len(used) >= (1 if stage == "evaluate" else 2), (stage, used)
    # The network metric finished on 1-CPU nodes with every image scored.
    assert len(per_image) and per_image["error"].isna().all()


def test_stages_on_three_nodes_with_everything_on_s3_equal_a_local_run(
    cluster, source, local_run, s3_server
):
    """The dataset, the checkpoint and every output only in the bucket: the nodes share no
    path. The outputs equal the local run's, the work spreads over the nodes, and a rerun
    is up to date without a GET of any image (requests counted by a recording proxy)."""
    client = s3_server.filesystem()
    prefix = f"{s3_server.bucket}/cluster-{uuid.uuid4().hex[:6]}"
    put_tree(client, source[0], f"{prefix}/data")
    put_tree(client, source[1].parent, f"{prefix}/ckpt")
    data, out = f"s3://{prefix}/data", f"s3://{prefix}/out"
    ckpt = f"s3://{prefix}/ckpt/{source[1].name}"

    def sets(endpoint: str) -> list[str]:
        return [*overrides(data, out, ckpt), f"storage.endpoint_override={endpoint}"]

    env = {**s3_credentials(s3_server), "POSE_PIPELINE_BATCH_DELAY": "keypoints:1"}
    finish(cli(["run"], sets(s3_server.endpoint), cluster.address, env), timeout=400)
    stored = objects(client, prefix)
    for local, remote in ((local_run / "data", "data/"), (local_run / "out", "out/")):
        want = files(local, *LEGACY)
        got = {
            rel[len(remote) :]: b
            for rel, b in stored.items()
            if rel.startswith(remote)
            and any(fnmatch.fnmatch(rel.rsplit("/", 1)[-1], p) for p in LEGACY)
        }
        assert want.keys() == got.keys()
        assert [k for k in want if want[k] != got[k] and not k.endswith(RANDOM_SCORES)] == []
    tables = {
        # The keypoints table is partitioned: its parts (core.partitioned).
        "keypoints": "data/tables/keypoints.parquet/part-",
        "posemaps": "data/tables/posemaps_index.parquet",
        "generate": "out/generated/manifest.parquet",
        "evaluate": "out/evaluation/per_image/ssim.parquet",
    }
    nodes = set(node_ids(cluster).values())
    for stage, key in tables.items():
        parts = [b for k, b in stored.items() if k.startswith(key)]
        assert parts, (stage, key)
        rows = pd.concat(pd.read_parquet(io.BytesIO(b)) for b in parts)
        used = set(rows["node"].dropna())
        assert used <= nodes and len(used) >= 2, (stage, used)

    with RequestLog(s3_server.endpoint) as proxy:
        finish(cli(["run"], sets(proxy.endpoint), cluster.address, env), timeout=400)
        with client.open_input_stream(f"{prefix}/out/run_manifest.parquet") as stream:
            runs = pd.read_parquet(io.BytesIO(stream.read()))
        last = runs[runs["run_id"] == runs["run_id"].iloc[-1]]
        assert set(last["status"]) <= {"skipped", "not needed"}, last[["stage", "status"]]
        images = [t for m, t in proxy.requests if m == "GET" and t.split("?")[0].endswith(".jpg")]
        assert proxy.requests and not images, images[:5]


def test_actors_and_train_workers_are_sized_from_their_node(cluster):
    probe = """
import json, sys, ray
from pipeline.core.config import RayConfig, TrainConfig
from pipeline.cluster.runtime import init_ray, largest_node_cpus
from pipeline.cluster.ray_pool import plan_pool
from stages.train import cpus_per_worker

class Probe:
    def __init__(self, actors_per_node):
        from pipeline.cluster.ray_pool import use_node_threads
        from pipeline.cluster.runtime import current_node, node_cpus
        self.node, self.threads = current_node(), use_node_threads(actors_per_node)

    def __call__(self, batch):
        n = len(batch["id"])
        return {"node": [self.node] * n, "threads": [self.threads] * n}

init_ray(RayConfig(address=sys.argv[1]))
pool = plan_pool(None)
rows = pool.map(ray.data.range(24, override_num_blocks=24), Probe, 1).take_all()
cpus = {n["NodeID"]: n["Resources"]["CPU"] for n in ray.nodes() if n["Alive"]}
print(json.dumps({"pool": [pool.size, pool.num_cpus], "largest": largest_node_cpus(),
    "train": cpus_per_worker(TrainConfig(), False), "cpus": cpus,
    "rows": sorted({(r["node"], int(r["threads"])) for r in rows})}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", probe, cluster.address],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    ids = {v: k for k, v in node_ids(cluster).items()}
    assert got["largest"] == 2 and 1 <= got["train"] <= 2
    # One actor per node, asking at most half of the smallest node (room for its feeders).
    assert got["pool"] == [3, 0.5]
    threads = {ids[node]: t for node, t in got["rows"]}
    assert threads == {"head": 1, "w1": 1, "w2": 2}


def replace_node(cluster, name: str) -> None:
    cluster.remove_node(cluster.workers[name], allow_graceful=False)
    cluster.workers[name] = start_node(cluster, name)
    cluster.wait_for_nodes()


@pytest.mark.parametrize("stage", ["keypoints", "generate"])
def test_losing_a_worker_node_mid_stage_loses_nothing(cluster, source, local_run, tmp_path, stage):
    """keypoints estimates a fresh tree; generate runs on the local run's annotations."""
    root = shutil.copytree(source[0] if stage == "keypoints" else local_run / "data",
                           tmp_path / "data")  # fmt: skip
    out = tmp_path / "out"
    sets = overrides(root, out, source[1])
    if stage == "keypoints":
        made, reference, key = root, local_run / "data", ["path"]
        table_path = root / "tables" / "keypoints.parquet"
    else:
        made, reference, key = out / "generated", local_run / "out" / "generated", MANIFEST_KEY
        table_path = made / "manifest.parquet"
    # Slow batches, each logging its node: w2 is removed while it holds a batch.
    log = tmp_path / "batches.log"
    env = {"POSE_PIPELINE_BATCH_DELAY": f"{stage}:2.5", "POSE_PIPELINE_BATCH_LOG": str(log)}
    proc = cli([stage], sets, cluster.address, env)
    lost = cluster.workers["w2"].node_id
    before_loss = set(node_ids(cluster).values())
    deadline = time.monotonic() + 240
    while not (log.is_file() and lost in log.read_text()) and proc.poll() is None:
        assert time.monotonic() < deadline, "w2 got no batch"
        time.sleep(0.2)
    assert proc.poll() is None, "the stage finished before a node could be lost"
    # w2 sleeps in the batch it just logged (2.5 s; one actor per node), so every later
    # line of the log is a batch started once it is gone.
    at_loss = len(log.read_text().splitlines())
    replace_node(cluster, "w2")
    finish(proc, timeout=400)
    patterns = ("*_keypoints.csv",) if stage == "keypoints" else ("*.jpg",)
    want, got = files(reference, *patterns), files(made, *patterns)
    assert want.keys() == got.keys()
    assert [k for k in want if want[k] != got[k]] == []
    table = pd.read_parquet(table_path)
    reference_table = pd.read_parquet(str(table_path).replace(str(made), str(reference)))
    # Every row is there, once.
    assert sorted(map(tuple, table[key].to_numpy().tolist())) == sorted(
        map(tuple, reference_table[key].to_numpy().tolist())
    )
    assert not table.duplicated(key).any()
    assert table["error"].isna().all()
    # Rows came from nodes that were there; work after the loss (the batch w2 held among
    # it) ran on the surviving nodes only.
    alive = set(node_ids(cluster).values())
    assert set(table["node"].dropna()) <= before_loss | alive
    after_loss = log.read_text().splitlines()[at_loss:]
    assert after_loss, "nothing ran after the loss: the batch w2 held was not redone"
    assert set(after_loss) <= alive - {lost}, after_loss
    if stage == "keypoints":  # one row per image: w2's rows are those of batches it finished
        started_on_lost = log.read_text().splitlines().count(lost)
        assert (table["node"] == lost).sum() <= 2 * (started_on_lost - 1)


def test_a_cluster_that_shrinks_to_one_cpu_mid_generate_finishes_or_says_why(
    cluster, source, local_run, tmp_path
):
    """Both worker nodes are lost in the middle of generate and not replaced, leaving the
    1-CPU head. The stage finishes there, or stops with the watchdog's error within
    ray.stall_timeout_s: never a silent wait. Before the watchdog, the actors restarted
    on the head held its CPU and the load tasks waited for it without end."""
    root = shutil.copytree(local_run / "data", tmp_path / "data")
    out = tmp_path / "out"
    sets = [*overrides(root, out, source[1]), "ray.stall_timeout_s=60"]
    log = tmp_path / "batches.log"
    env = {"POSE_PIPELINE_BATCH_DELAY": "generate:2.5", "POSE_PIPELINE_BATCH_LOG": str(log)}
    proc = cli(["generate"], sets, cluster.address, env)
    workers = {cluster.workers[n].node_id for n in ("w1", "w2")}
    deadline = time.monotonic() + 240
    while not (log.is_file() and workers & set(log.read_text().split())) and proc.poll() is None:
        assert time.monotonic() < deadline, "no worker node got a batch"
        time.sleep(0.2)
    assert proc.poll() is None, "generate finished before the cluster could shrink"
    try:
        for name in ("w1", "w2"):
            cluster.remove_node(cluster.workers[name], allow_graceful=False)
        text, _ = proc.communicate(timeout=400)
    finally:
        for name in ("w1", "w2"):  # the module's cluster, whole again for later tests
            cluster.workers[name] = start_node(cluster, name)
        cluster.wait_for_nodes()
    if proc.returncode == 2:
        assert "no batch finished in 60 s (ray.stall_timeout_s)" in text, text[-4000:]
        return
    assert proc.returncode == 0, text[-4000:]
    want, got = files(local_run / "out" / "generated", "*.jpg"), files(out / "generated", "*.jpg")
    assert want.keys() == got.keys()
    assert [k for k in want if want[k] != got[k]] == []
