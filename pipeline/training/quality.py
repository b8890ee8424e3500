"""Whether training worked: SSIM and L1 over test pairs of the trained NetG against the
untrained one (the seeded init training starts from) and against copying the condition."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.core.atomic_io import read_table
from pipeline.core.config import TrainConfig
from pipeline.core.layout import DatasetLayout
from pipeline.core.schemas import KEYPOINTS_SCHEMA, PAIRS_SCHEMA
from pipeline.training.data import PairImages

CANDIDATES = ("trained", "untrained", "copy_condition")


def pair_scores(netG, data: PairImages, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Per pair: SSIM (`pipeline.metrics.ssim`, as skimage on uint8) and L1 (mean |a - b| / 255)
    of NetG's output (eval mode) and of the condition image against the target. Pairs that
    cannot be loaded are left out."""
    import torch

    from pipeline.core.imaging import to_uint8
    from pipeline.metrics.ssim import ssim_image

    items = [item for item in (data[i] for i in range(len(data))) if not isinstance(item, str)]
    scores: dict[str, list[float]] = {k: [] for k in ("ssim", "l1", "copy_ssim", "copy_l1")}
    netG.eval()
    with torch.no_grad():
        for at in range(0, len(items), batch_size):
            a, b, maps = data.collate(items[at : at + batch_size])
            fakes, reals, conds = to_uint8(netG(a, maps)), to_uint8(b), to_uint8(a)
            for fake, real, cond in zip(fakes, reals, conds, strict=True):
                for prefix, img in (("", fake), ("copy_", cond)):
                    scores[prefix + "ssim"].append(ssim_image(real, img))
                    diff = np.abs(real.astype(np.float32) - img.astype(np.float32))
                    scores[prefix + "l1"].append(float(diff.mean()) / 255)
    return {k: np.asarray(v) for k, v in scores.items()}


def training_quality(
    root: str | os.PathLike,
    tc: TrainConfig,
    checkpoint: Path,
    size: tuple[int, int],
    max_pairs: int,
    map_files: bool = True,
) -> dict | None:
    """{"pairs", "ssim": {trained, untrained, copy_condition}, "l1": {...}, "verdict"} over
    up to `max_pairs` test pairs (a seeded sample); None when the dataset has no test pair."""
    import torch

    from pipeline.core.weights import load_into
    from pipeline.generator.networks import build_generator

    layout = DatasetLayout(root)
    pairs = read_table(layout.pairs_table, PAIRS_SCHEMA)
    pairs = pairs[pairs["split"] == "test"]
    if pairs.empty:
        return None
    pairs = pairs.sample(n=min(max_pairs, len(pairs)), random_state=0)
    # Without map files (posemaps.export off) the maps are rendered from the keypoints.
    keypoints = None if map_files else read_table(layout.keypoints_table, KEYPOINTS_SCHEMA)
    data = PairImages(root, pairs, keypoints, size, map_files)
    torch.manual_seed(tc.seed)  # the same init the training started from
    untrained = pair_scores(build_generator(tc.ngf), data)
    trained = pair_scores(load_into(build_generator(tc.ngf, init=False), checkpoint), data)
    ssim = {
        "trained": float(trained["ssim"].mean()),
        "untrained": float(untrained["ssim"].mean()),
        "copy_condition": float(trained["copy_ssim"].mean()),
    }
    l1 = {
        "trained": float(trained["l1"].mean()),
        "untrained": float(untrained["l1"].mean()),
        "copy_condition": float(trained["copy_l1"].mean()),
    }
    beats = ssim["trained"] > max(ssim["untrained"], ssim["copy_condition"]) and l1[
        "trained"
    ] < min(l1["untrained"], l1["copy_condition"])
    return {
        "pairs": len(trained["ssim"]),
        "checkpoint": checkpoint.name,
        "ssim": ssim,
        "l1": l1,
        "verdict": "training worked: the trained NetG beats the untrained one and copying "
        "the condition on both SSIM and L1"
        if beats
        else "training did NOT beat both baselines on SSIM and L1: train longer",
    }


def quality_line(quality: dict) -> str:
    s, l1 = quality["ssim"], quality["l1"]
    return (
        f"test pairs ({quality['pairs']}): SSIM trained {s['trained']:.3f} / untrained "
        f"{s['untrained']:.3f} / copy condition {s['copy_condition']:.3f}; L1 "
        f"{l1['trained']:.4f} / {l1['untrained']:.4f} / {l1['copy_condition']:.4f}: "
        f"{quality['verdict']}"
    )
