import json
import shutil
import signal

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core.atomic_io import read_table
from pipeline.core.config import Config
from pipeline.core.layout import DatasetLayout, TrainLayout
from pipeline.core.schemas import PAIRS_SCHEMA
from pipeline.generator.networks import NetD, NetG
from pipeline.training.data import BatchStream, PairImages, load_train_pairs, rank_order
from pipeline.training.step import autocast_for, build_nets, loss_weights, train_step
from stages.train import run_train


def tiny_config(root, out, **train) -> Config:
    cfg = Config()
    cfg.dataset.root = str(root)
    cfg.output.root = str(out)
    cfg.ray.num_cpus = 2
    cfg.train.perceptual = "off"
    settings = dict(
        ngf=4,
        ndf=4,
        batch_size=2,
        iterations=2,
        ckpt_every=2,
        sample_every=2,
        num_workers=1,
        loader_workers=0,
        cpus_per_worker=1,
        quality_pairs=2,
    )
    for key, value in {**settings, **train}.items():
        setattr(cfg.train, key, value)
    return cfg


def test_rank_order_shards_a_seeded_shuffle():
    shards = [rank_order(10, r, 2, seed=7, epoch=0) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(10))
    assert shards[0] == rank_order(10, 0, 2, seed=7, epoch=0)
    assert shards[0] != rank_order(10, 0, 2, seed=7, epoch=1)


def test_batch_stream_skips_bad_pairs_and_restarts_at_its_cursor(annotated_root):
    pairs, keypoints = load_train_pairs(annotated_root)
    pairs = pairs.head(6).copy()
    pairs.loc[2, "imgA"] = "img/missing.jpg"
    data = PairImages(annotated_root, pairs, keypoints, (256, 176))
    stream = BatchStream(data, batch_size=4, rank=0, world=1, seed=0)
    first = stream.next_batch()
    assert [t.shape[0] for t in first] == [4, 4, 4] and first[2].shape[1] == 36
    cursor = stream.cursor
    expected = stream.next_batch()  # 8 good items of 5 per epoch: crosses into epoch 1
    assert stream.cursor[0] == 1 and stream.skipped >= 1
    assert all("missing.jpg" in reason for reason in stream.reasons)
    again = BatchStream(data, batch_size=4, rank=0, world=1, seed=0, cursor=cursor).next_batch()
    assert all(torch.equal(x, y) for x, y in zip(expected, again, strict=True))


def test_loss_drops_on_a_fixed_batch(annotated_root):
    pairs, keypoints = load_train_pairs(annotated_root)
    data = PairImages(annotated_root, pairs.head(2), keypoints, (256, 176))
    batch = tuple(torch.stack(t) for t in zip(data[0], data[1], strict=True))
    tc = tiny_config(annotated_root, "unused").train
    nets = build_nets(tc)
    l1 = [
        train_step(nets, batch, loss_weights(tc), None, autocast_for(tc, "cpu"))["g_l1"].item()
        for _ in range(30)
    ]
    assert np.mean(l1[-5:]) < 0.75 * np.mean(l1[:3]), l1


def test_two_workers_write_official_checkpoints_skip_bad_pairs_and_resume(
    annotated_root, ray_session, tmp_path
):
    root = tmp_path / "data"
    shutil.copytree(annotated_root, root)
    layout = DatasetLayout(root)
    train = read_table(layout.pairs_table, PAIRS_SCHEMA).query("split == 'train'")
    (root / train.iloc[0]["imgB"]).write_bytes(b"not a jpeg")  # a broken image
    layout.posemap("train", train.iloc[-1]["fidA"]).unlink()  # rendered on the fly
    out = tmp_path / "train"
    cfg = tiny_config(root, tmp_path, num_workers=2)

    on_sigint = signal.getsignal(signal.SIGINT)
    result = run_train(cfg, out=out)
    # Ray Train's own SIGINT handler is gone with its run: a later Ctrl-C stops the next
    # stage of a DAG instead of calling a finished run's controller.
    assert signal.getsignal(signal.SIGINT) is on_sigint
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["netD_2.pth", "netG_2.pth"]
    state = torch.load(ckpts / "netG_2.pth", weights_only=True)
    # Trained channels_last, saved in the published (contiguous) layout.
    assert all(v.is_contiguous() for v in state.values())
    NetG(ngf=4).load_state_dict(state)
    NetD(ndf=4).load_state_dict(torch.load(ckpts / "netD_2.pth", weights_only=True))
    assert result.skipped >= 1
    meta = json.loads((out / "run_meta.json").read_text())
    assert meta["perceptual_used"] is False and meta["skipped_pairs"] == result.skipped
    assert meta["data"] == "decoded once into memory"
    assert meta["test_quality"]["pairs"] == 2 and set(meta["test_quality"]["ssim"]) == {
        "trained",
        "untrained",
        "copy_condition",
    }
    assert (out / "samples" / "iter_2.png").is_file()

    cfg.train.iterations = 4
    run_train(cfg, out=out, resume=True)
    assert json.loads((out / "run_meta.json").read_text())["resumed_from"] == 2
    assert (ckpts / "netG_4.pth").is_file()
    logged = pd.read_parquet(out / "log.parquet")
    assert logged["iteration"].tolist() == [1, 2, 3, 4] and logged["g_l1"].notna().all()
    assert TrainLayout(out).latest_state()[0] == 4
    check_tensorboard_events(out, logged)


def check_tensorboard_events(out, logged: pd.DataFrame) -> None:
    """`tensorboard --logdir OUT/train` sees every loss the log holds, the learning rate,
    the seconds per iteration and the samples, for both the first run and its resume."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipeline.training.step import LOSS_NAMES

    steps = logged["iteration"].tolist()
    for events in sorted(out.glob("events.out.tfevents.*")):
        assert events.stat().st_size > 0
    board = EventAccumulator(str(out), size_guidance={"scalars": 0, "images": 0}).Reload()
    scalars = set(board.Tags()["scalars"])
    logged_losses = [n for n in LOSS_NAMES if logged[n].notna().any()]
    assert {f"loss/{n}" for n in logged_losses} <= scalars, scalars
    assert {"train/learning_rate", "train/seconds_per_iteration"} <= scalars
    for name in logged_losses:
        got = {e.step: e.value for e in board.Scalars(f"loss/{name}")}
        assert sorted(got) == steps
        assert np.allclose([got[s] for s in steps], logged[name], rtol=1e-5)
    assert [e.step for e in board.Images("samples")] == [2, 4]


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(
    annotated_root, ray_session, tmp_path
):
    straight = tmp_path / "straight"
    run_train(tiny_config(annotated_root, tmp_path, iterations=4), out=straight)
    resumed = tmp_path / "resumed"
    run_train(tiny_config(annotated_root, tmp_path, iterations=2), out=resumed)
    run_train(tiny_config(annotated_root, tmp_path, iterations=4), out=resumed, resume=True)
    for net in ("netG_4.pth", "netD_4.pth"):
        a = torch.load(straight / "checkpoints" / net, weights_only=True)
        b = torch.load(resumed / "checkpoints" / net, weights_only=True)
        assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a), net
