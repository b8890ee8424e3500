"""The in-memory training set gives the streamed set's batches (bad pairs skipped at the
same places), falls back above its memory ceiling, and the test-pair quality check and
its report section."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cli.dag import time_summary
from pipeline.core.config import Config, TrainConfig
from pipeline.core.layout import OutputLayout, TrainLayout
from pipeline.pose.posemap import gaussian_map, one_hot_coords, one_hot_map
from pipeline.training.data import BatchStream, PairImages, decode_in_memory, load_train_pairs
from pipeline.training.quality import training_quality
from pipeline.training.step import build_nets
from stages.report_pipeline import training_check_section


def test_one_hot_coords_keep_one_hot_maps_and_refuse_gaussian_ones():
    x, y = np.array([3, -1, 10]), np.array([5, 2, 7])
    pose = one_hot_map(np.resize(x, 18), np.resize(y, 18), 16, 12)
    coords = one_hot_coords(pose)
    assert coords[0].tolist() == [5, 3] and coords[1].tolist() == [-1, -1]
    assert one_hot_coords(gaussian_map(x, y, 16, 12, sigma=2.0)) is None


def test_in_memory_batches_equal_streamed_ones_with_the_same_skips(annotated_root):
    pairs, keypoints = load_train_pairs(annotated_root)
    pairs = pairs.head(7).copy()
    pairs.loc[2, "imgA"] = "img/missing.jpg"
    pairs.loc[4, "fidB"] = "no_such_file_id"  # no npz and no keypoints
    streamed = PairImages(annotated_root, pairs, keypoints, (256, 176))
    in_memory = decode_in_memory(streamed, 2**30)
    assert in_memory is not None and sorted(in_memory.errors) == [2, 4]
    a = BatchStream(streamed, batch_size=4, rank=0, world=1, seed=0)
    b = BatchStream(in_memory, batch_size=4, rank=0, world=1, seed=0)
    for _ in range(3):  # 12 good items of 5 per epoch: crosses two epochs
        assert all(torch.equal(x, y) for x, y in zip(a.next_batch(), b.next_batch(), strict=True))
        assert a.cursor == b.cursor and a.skipped == b.skipped
    assert b.skipped >= 2 and any("no_such_file_id" in r for r in b.reasons)
    distinct = len(set(pairs["imgA"]) | set(pairs["imgB"]))
    assert decode_in_memory(streamed, 256 * 176 * 3 * (distinct - 1)) is None


def test_quality_check_scores_three_candidates_and_the_report_shows_them(annotated_root, tmp_path):
    tc = TrainConfig(ngf=4, ndf=4, perceptual="off")
    checkpoint = tmp_path / "netG_1.pth"
    torch.save(build_nets(tc).netG.state_dict(), checkpoint)
    quality = training_quality(annotated_root, tc, checkpoint, (256, 176), max_pairs=3)
    assert quality["pairs"] == 3
    # The checkpoint is the untrained init itself: equal scores, so no "training worked".
    assert quality["ssim"]["trained"] == pytest.approx(quality["ssim"]["untrained"])
    assert 0 < quality["l1"]["copy_condition"] < 1 and "NOT" in quality["verdict"]

    cfg = Config()
    cfg.output.root = str(tmp_path / "out")
    meta = TrainLayout(OutputLayout(cfg.output.root).train).meta
    assert training_check_section(cfg) is None
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"test_quality": quality}))
    section = training_check_section(cfg)
    assert f"{quality['ssim']['copy_condition']:.3f}" in section.html
    assert "copy the condition" in section.markdown and "NOT" in section.markdown


def test_demo_time_summary_lists_the_stages_that_ran_by_time():
    rows = pd.DataFrame(
        {
            "stage": ["keypoints", "train", "report"],
            "status": ["ran", "ran", "skipped"],
            "seconds": [30.0, 90.0, 0.1],
        }
    )
    assert time_summary(125.0, rows) == "2 min 5 s: train 90 s (72%), keypoints 30 s (24%)"
