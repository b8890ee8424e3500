"""The whole `run` DAG with the dataset and the outputs on S3 (a real server, SeaweedFS:
tests/s3_server.py): the same pose maps, tables, legacy CSVs, generated images and
per-image scores as the same run on local disk, nothing of either in the working
directory, and a rerun that is up to date without reading an image."""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
import pytest
from s3_server import RequestLog
from test_pipeline_run import REPO, TINY

from pipeline.core import storage
from pipeline.core.atomic_io import read_table
from pipeline.core.config import load_config
from pipeline.synthetic.tree import GROUND_TRUTH_CSV, write_synthetic_tree
from stages.dag import RunPlan, plan_run, run_dag

pytestmark = pytest.mark.slow

# What differs between two runs of the same inputs: when, where and under which root.
RUN_COLUMNS = {"inputs", "node", "run_id", "started", "finished", "seconds"}


def _overrides(data: str, out: str, endpoint: str | None = None) -> list[str]:
    sets = [
        f"dataset.root={data}",
        f"output.root={out}",
        f"keypoints.annotations={GROUND_TRUTH_CSV}",
        f"keypoints.compare={GROUND_TRUTH_CSV}",
        *TINY,
    ]
    return sets + ([f"storage.endpoint_override={endpoint}"] if endpoint else [])


def _files(root: str) -> dict[str, bytes]:
    return {f.rel: storage.read_bytes(f.path) for f in storage.list_files(root)}


def _table(data: bytes) -> pd.DataFrame:
    frame = pd.read_parquet(io.BytesIO(data))
    return frame.drop(columns=[c for c in frame.columns if c in RUN_COLUMNS])


def _same(rel: str, mine: bytes, theirs: bytes) -> None:
    if rel.endswith(".parquet"):
        pd.testing.assert_frame_equal(_table(theirs), _table(mine), obj=rel)
    elif rel.endswith(".npz"):
        a, b = (np.load(io.BytesIO(d))["arr_0"] for d in (mine, theirs))
        np.testing.assert_array_equal(b, a, err_msg=rel)
    else:
        assert theirs == mine, rel


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty working directory: the S3 run must leave nothing in it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_the_whole_dag_on_s3_equals_the_local_run(s3, tmp_path, workdir):
    local = tmp_path / "data"
    write_synthetic_tree(local, identities=6, poses_per_identity=3, seed=5)
    prefix = f"s3://{s3.bucket}/dag-{uuid.uuid4().hex[:6]}"
    data, out = f"{prefix}/data", f"{prefix}/out"
    for f in storage.list_files(local):
        storage.write_bytes(storage.join(data, f.rel), storage.read_bytes(f.path))

    demo = REPO / "configs" / "demo.yaml"
    ran = run_dag(
        load_config(demo, _overrides(str(local), str(tmp_path / "out"))), plan_run(), print
    )
    assert set(ran["status"]) == {"ran"}, ran
    cfg = load_config(demo, _overrides(data, out, s3.endpoint))
    ran = run_dag(cfg, plan_run(), print)
    assert set(ran["status"]) == {"ran"}, ran[["stage", "status", "reason"]]
    assert not os.listdir(workdir)

    # Pose maps, tables, legacy CSVs: as bytes, or as arrays and rows where a run's own
    # times and roots are recorded.
    theirs, mine = _files(data), _files(str(local))
    made = sorted(set(mine) - {f.rel for f in storage.list_files(local / "img")})
    assert set(theirs) == set(mine)
    for rel in made:
        _same(rel, mine[rel], theirs[rel])
    # Generated images and per-image scores.
    theirs, mine = _files(out), _files(str(tmp_path / "out"))
    for rel in sorted(mine):
        if rel.startswith(("generated/", "evaluation/per_image/")):
            _same(rel, mine[rel], theirs[rel])

    # Training kept its checkpoints, Ray Train's resumable state and its TensorBoard
    # events under the same prefix.
    assert {"train/checkpoints/netG_2.pth", "train/checkpoints/netD_2.pth"} <= set(theirs)
    assert any(r.startswith("train/ray/") and r.endswith("/state.pt") for r in theirs)
    assert any(r.startswith("train/events.out.tfevents") for r in theirs)

    # Up to date from listings alone: no image is read again.
    with RequestLog(s3.endpoint) as proxy:
        again = run_dag(load_config(demo, _overrides(data, out, proxy.endpoint)), plan_run())
        assert set(again["status"]) == {"skipped"}, again[["stage", "status", "reason"]]
        gets = [t for m, t in proxy.requests if m == "GET" and ".jpg" in t]
        assert not gets, gets
        # Each prefix listed once (a listing past 1,000 keys goes on over further pages).
        lists = [parse_qs(urlsplit(t).query) for _, t in proxy.requests if "list-type=2" in t]
        firsts = [q.get("prefix", [""])[0] for q in lists if "continuation-token" not in q]
        assert firsts and len(firsts) == len(set(firsts)), sorted(firsts)

    # Raising train.iterations continues from Ray Train's resumable state in the bucket.
    more = _overrides(data, out, s3.endpoint) + ["train.iterations=4"]
    ran = run_dag(load_config(demo, more), RunPlan(["keypoints", "posemaps", "pairs", "train"]))
    train = ran.set_index("stage").loc["train"]
    assert train["status"] == "ran" and "continues from iteration 2" in train["reason"], train
    listed = {f.rel for f in storage.list_files(out)}
    assert "train/checkpoints/netG_4.pth" in listed
    log = read_table(storage.join(out, "train", "log.parquet"))
    assert log["iteration"].tolist() == [1, 2, 3, 4]
