"""A training run asking for more than the Ray cluster has stops at once with a ConfigError
(Ray Train would wait and retry its worker start for minutes)."""

from __future__ import annotations

import time

import pytest
from test_train import tiny_config

from pipeline.core.config import TrainConfig
from pipeline.core.errors import ConfigError
from pipeline.training.resources import ClusterResources, check_train_resources
from stages.train import run_train


def cpu_nodes(*cpus: int) -> ClusterResources:
    return ClusterResources(tuple((float(c), 0.0) for c in cpus))


def test_more_workers_than_cpus_names_the_setting_the_ask_and_the_cluster():
    problem = check_train_resources(TrainConfig(num_workers=100), cpu_nodes(2))
    assert problem is not None
    assert "train.num_workers = 100" in problem
    assert "100 workers of 1 CPU each (100 CPUs)" in problem
    assert "the Ray cluster has 2 CPUs on one node" in problem
    assert "at most 2 such workers fit" in problem
    assert check_train_resources(TrainConfig(num_workers=2), cpu_nodes(2)) is None
    assert check_train_resources(TrainConfig(num_workers=1), cpu_nodes(2)) is None


def test_each_worker_must_fit_on_one_node():
    # 6 CPUs in all, but a node of 3 holds one worker of 2 CPUs.
    tc = TrainConfig(num_workers=3, cpus_per_worker=2)
    problem = check_train_resources(tc, cpu_nodes(3, 3))
    assert problem is not None and "at most 2 such workers fit" in problem
    assert "train.cpus_per_worker" in problem
    assert check_train_resources(tc, cpu_nodes(4, 2)) is None
    big = check_train_resources(TrainConfig(num_workers=1, cpus_per_worker=8), cpu_nodes(4, 4))
    assert big is not None and "not even one fits" in big
    assert "Lower train.cpus_per_worker" in big


def test_gpu_workers_are_counted_against_the_gpus():
    cluster = ClusterResources(((8.0, 2.0),))
    problem = check_train_resources(TrainConfig(num_workers=4), cluster)
    assert problem is not None
    assert "1 CPU and 1 GPU each (4 CPUs, 4 GPUs)" in problem
    assert "8 CPUs and 2 GPUs" in problem and "at most 2 such workers fit" in problem
    assert check_train_resources(TrainConfig(num_workers=2), cluster) is None
    # Without GPU, the same cluster runs 4 CPU workers.
    assert check_train_resources(TrainConfig(num_workers=4, use_gpu="no"), cluster) is None
    no_gpu = check_train_resources(TrainConfig(use_gpu="yes"), cpu_nodes(4))
    assert no_gpu is not None and "train.use_gpu: yes" in no_gpu


# The old code waited on Ray Train's retries for good; the thread method ends even that.
@pytest.mark.timeout(120, method="thread")
def test_run_train_with_100_workers_on_2_cpus_stops_at_once(annotated_root, ray_session, tmp_path):
    cfg = tiny_config(annotated_root, tmp_path, num_workers=100, cpus_per_worker=None)
    out = tmp_path / "train"
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"train\.num_workers = 100 .*100 CPUs.* 2 CPUs"):
        run_train(cfg, out=out)
    assert time.monotonic() - started < 30
    assert not (out / "run_meta.json").exists()  # refused before the run wrote anything
