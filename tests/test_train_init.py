"""train --init-from: a netG/netD pair found from a file or a directory, loaded into both
nets, numbering continued from its iteration, the source files' sha256 recorded."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from test_train import tiny_config

from pipeline.core.weights import WeightsError, file_sha256
from pipeline.training.checkpoints import resolve_init_checkpoints
from pipeline.training.step import build_nets
from stages.train import run_train


def test_resolve_a_directory_a_file_and_an_iteration_override(tmp_path):
    for name in ("netG_100.pth", "netD_100.pth", "netG_200.pth", "netD_050.pth"):
        (tmp_path / name).write_bytes(b"")
    found = resolve_init_checkpoints(tmp_path)  # 200 has no netD: the highest pair is 100
    assert (found.netG.name, found.netD.name, found.iteration) == (
        "netG_100.pth",
        "netD_100.pth",
        100,
    )
    found = resolve_init_checkpoints(tmp_path / "netD_100.pth", iteration=257500)
    assert (found.netG, found.netD, found.iteration) == (
        tmp_path / "netG_100.pth",
        tmp_path / "netD_100.pth",
        257500,
    )
    with pytest.raises(WeightsError, match=r"netD_200\.pth not found"):
        resolve_init_checkpoints(tmp_path / "netG_200.pth")
    (tmp_path / "weights.pth").write_bytes(b"")
    with pytest.raises(WeightsError, match="expected a file named netG_<iter>.pth"):
        resolve_init_checkpoints(tmp_path / "weights.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no netG_<iter>.pth with a netD_<iter>.pth"):
        resolve_init_checkpoints(tmp_path / "empty")


def test_cli_refuses_a_bad_init_before_training(annotated_root, tmp_path, ray_session):
    from cli.main import cli

    (tmp_path / "netG_7.pth").write_bytes(b"not a checkpoint")
    (tmp_path / "netD_7.pth").write_bytes(b"not a checkpoint")
    base = ["--set", f"dataset.root={annotated_root}", "train", "--out", str(tmp_path / "t")]
    res = CliRunner().invoke(cli, [*base, "--init-iter", "5"])
    assert res.exit_code == 2 and "--init-iter needs --init-from" in res.output
    res = CliRunner().invoke(cli, [*base, "--init-from", str(tmp_path / "netG_7.pth")])
    assert res.exit_code == 2 and "netG_7.pth is not a plain state dict" in res.output
    assert not (tmp_path / "t" / "checkpoints").exists()


@pytest.mark.slow
def test_init_from_another_runs_pair_continues_its_weights_and_numbering(
    annotated_root, ray_session, tmp_path
):
    source = tmp_path / "source"
    run_train(tiny_config(annotated_root, tmp_path, seed=1, iterations=2), out=source)
    # lr 0: the parameters after the first fine-tuning iteration are exactly those it started
    # from, and seed 0 would have initialised different ones.
    cfg = tiny_config(annotated_root, tmp_path, seed=0, iterations=3, ckpt_every=1, lr=0.0)
    result = run_train(cfg, out=tmp_path / "fine", init_from=source / "checkpoints")
    ckpts = tmp_path / "fine" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["netD_3.pth", "netG_3.pth"]
    assert pd.read_parquet(tmp_path / "fine" / "log.parquet")["iteration"].tolist() == [3]
    assert any("numbering continues from 2; Adam state starts fresh" in n for n in result.notes)
    for net in ("netG", "netD"):
        before = torch.load(source / "checkpoints" / f"{net}_2.pth", weights_only=True)
        after = torch.load(ckpts / f"{net}_3.pth", weights_only=True)
        buffers = ("running_mean", "running_var", "num_batches_tracked")
        params = [k for k in before if not k.endswith(buffers)]
        assert all(torch.equal(before[k], after[k]) for k in params), net
        # Batch-norm statistics came along and moved on (a fresh net's counts would be lower).
        counts = [k for k in before if k.endswith("num_batches_tracked")]
        assert counts and all(after[k] > before[k] for k in counts), net
    fresh = tiny_config(annotated_root, tmp_path, seed=0)
    tuned = torch.load(ckpts / "netG_3.pth", weights_only=True)
    assert not torch.equal(
        build_nets(fresh.train).netG.state_dict()["in1_conv1.0.weight"], tuned["in1_conv1.0.weight"]
    )
    meta = json.loads((tmp_path / "fine" / "run_meta.json").read_text())
    init = meta["init_from"]
    assert init["iteration"] == 2 and "fresh Adam state" in init["optimiser"]
    for net in ("netG", "netD"):
        assert init[net]["sha256"] == file_sha256(source / "checkpoints" / f"{net}_2.pth")
    assert meta["resumed_from"] == 0 and meta["status"] == "finished"
