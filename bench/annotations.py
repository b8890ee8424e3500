"""Benchmarks of the annotation stages, each ratio measured side by side in one run:
keypoints (stage on 1 and 2 Ray workers vs a bare in-process loop, same images and network),
posemaps (stage vs the published serial approach) and pairs (a DeepFashion-sized table);
mediapipe keypoints (stage on 1 Ray worker vs a bare in-process loop) and its PCKh against
the synthetic ground truth on a 40x6 tree.

    .venv/bin/python bench/annotations.py [--images 200] [--maps 2000] [--pairs-rows 52712]
        [--checkpoint PATH] [--only keypoints,posemaps,pairs,mediapipe]

Without --checkpoint a random-initialised openpifpaf shufflenetv2k16 is used: it costs the
same network time as the pretrained one, though it finds fewer people to decode.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.cluster.runtime import init_ray  # noqa: E402
from pipeline.core.config import load_config  # noqa: E402
from pipeline.core.layout import DatasetLayout
from pipeline.core.paths import file_id  # noqa: E402
from pipeline.core.schemas import KEYPOINTS_SCHEMA  # noqa: E402

DEEPFASHION_IMAGES = 52_712


def random_checkpoint(path: Path) -> Path:
    import openpifpaf
    import torch

    factory = openpifpaf.network.Factory()
    factory.base_name = "shufflenetv2k16"
    net, _ = factory.factory(head_metas=openpifpaf.plugins.coco.CocoKp().head_metas)
    torch.save({"model": net, "epoch": 0}, path)
    return path


def bench_keypoints(tmp: Path, n_images: int, checkpoint: Path | None) -> dict:
    from pipeline.core.imaging import load_rgb
    from pipeline.pose.openpifpaf_estimator import KeypointEstimator
    from pipeline.synthetic.tree import write_synthetic_tree
    from stages.keypoints import list_images, run_keypoints

    root = tmp / "kp"
    write_synthetic_tree(root, identities=max(2, n_images // 5), poses_per_identity=5, seed=1)
    ckpt = checkpoint or random_checkpoint(tmp / "shufflenetv2k16-random.pkl")
    cfg = load_config(overrides=[f"dataset.root={root}"])
    paths = list_images(cfg)["path"].tolist()[:n_images]
    cfg.dataset.train_list = "bench_list.csv"
    cfg.dataset.test_list = "none.csv"
    pd.DataFrame({"img": paths}).to_csv(root / "bench_list.csv", index=False)

    # A script loads the network too; the stage's actor does the same inside its worker.
    t_load = time.perf_counter()
    est = KeypointEstimator(ckpt)
    est.predict([np.asarray(load_rgb(root / paths[0]))])  # warm-up, as an actor does
    t = time.perf_counter()
    for i in range(0, len(paths), cfg.keypoints.batch_size):
        est.predict(
            [np.asarray(load_rgb(root / p)) for p in paths[i : i + cfg.keypoints.batch_size]]
        )
    bare_warm = time.perf_counter() - t
    bare = time.perf_counter() - t_load

    init_ray(cfg.ray)
    out = {
        "images": len(paths),
        "bare_loop_s": round(bare, 2),
        "bare_loop_warm_s": round(bare_warm, 2),
    }
    for workers in (1, 2):
        cfg.keypoints.concurrency = workers
        t = time.perf_counter()
        run_keypoints(cfg, checkpoint=str(ckpt), force=True, progress=False)
        out[f"stage_{workers}w_s"] = round(time.perf_counter() - t, 2)
    out["ratio_1w_vs_bare"] = round(bare / out["stage_1w_s"], 3)
    out["ratio_1w_vs_bare_warm"] = round(bare_warm / out["stage_1w_s"], 3)
    out["speedup_2w_vs_1w"] = round(out["stage_1w_s"] / out["stage_2w_s"], 3)
    return out


def bench_mediapipe(tmp: Path, identities: int = 40, poses: int = 6) -> dict:
    """The mediapipe stage on 1 worker vs a bare loop over the same images, and the
    stage's keypoints scored against the tree's ground truth (annotation QA)."""
    from pipeline.core.imaging import load_rgb
    from pipeline.pose.estimator_factory import build_estimator
    from pipeline.pose.keypoint_qa import overall_pckh
    from pipeline.synthetic.tree import GROUND_TRUTH_CSV, write_synthetic_tree
    from stages.keypoints import list_images, run_keypoints

    root = tmp / "mp"
    write_synthetic_tree(root, identities=identities, poses_per_identity=poses, seed=0)
    cfg = load_config(
        overrides=[
            f"dataset.root={root}",
            "keypoints.estimator=mediapipe",
            "keypoints.concurrency=1",
        ]
    )
    paths = list_images(cfg)["path"].tolist()
    t = time.perf_counter()
    est = build_estimator("mediapipe")  # the actor builds one too; both are timed
    for p in paths:
        est.predict([np.asarray(load_rgb(root / p))])
    bare = time.perf_counter() - t
    init_ray(cfg.ray)
    t = time.perf_counter()
    result = run_keypoints(cfg, force=True, progress=False, compare=str(root / GROUND_TRUTH_CSV))
    stage = time.perf_counter() - t
    from pipeline.core.atomic_io import read_table
    from pipeline.pose.keypoint_qa import KEYPOINT_QA_SCHEMA

    qa = read_table(result.outputs["keypoints_qa"], KEYPOINT_QA_SCHEMA)
    table = read_table(DatasetLayout(root).keypoints_table, KEYPOINTS_SCHEMA)
    return {
        "images": len(paths),
        "bare_loop_s": round(bare, 2),
        "stage_1w_s": round(stage, 2),
        "ratio_1w_vs_bare": round(bare / stage, 3),
        "without_person": int((table["n_valid"] == 0).sum()),
        "pckh_vs_ground_truth": round(overall_pckh(qa), 4),
        "counted": int(qa["error"].isna().sum()),
    }


def keypoint_table(
    n: int, rng: np.random.Generator, height: int = 256, width: int = 176
) -> pd.DataFrame:
    """A keypoints table of n images in ~6.6-image identity folders, random keypoints."""
    ident = np.sort(rng.integers(0, max(1, int(n / 6.6)), n))
    paths = [f"img/MEN/Denim/id_{g:08d}/{i:02d}_1_front.jpg" for i, g in enumerate(ident)]
    x = rng.integers(0, width, (n, 18)).astype(np.int32)
    y = rng.integers(0, height, (n, 18)).astype(np.int32)
    missing = rng.random((n, 18)) < 0.2
    x[missing], y[missing] = -1, -1
    return pd.DataFrame(
        {
            "path": paths,
            "file_id": [file_id(p) for p in paths],
            "split": np.where(rng.random(n) < 0.15, "test", "train"),
            "img_h": np.int32(height),
            "img_w": np.int32(width),
            "x": list(x),
            "y": list(y),
            "score": list((~missing).astype(np.float32)),
            "n_valid": (~missing).sum(1).astype(np.int32),
            "estimator": "bench",
            "error": None,
        }
    )


def published_posemaps(table: pd.DataFrame, out: Path) -> None:
    """The published utility's way: one image at a time, zeros, ones, savez_compressed."""
    for r in table.itertuples():
        m = np.zeros((r.img_h, r.img_w, 18), np.uint8)
        for k in range(18):
            if r.x[k] != -1 and r.y[k] != -1:
                m[r.y[k], r.x[k], k] = 1
        np.savez_compressed(out / f"{r.file_id}.npz", m)


def bench_posemaps(tmp: Path, n: int) -> dict:
    from stages.keypoints import keypoints_output
    from stages.posemaps import run_posemaps

    root = tmp / "pm"
    table = keypoint_table(n, np.random.default_rng(0))
    keypoints_output(DatasetLayout(root)).commit(table)
    serial_dir = tmp / "serial"
    serial_dir.mkdir()
    t = time.perf_counter()
    published_posemaps(table, serial_dir)
    serial = time.perf_counter() - t
    cfg = load_config(overrides=[f"dataset.root={root}"])
    init_ray(cfg.ray)
    t = time.perf_counter()
    run_posemaps(cfg, force=True, progress=False)
    stage = time.perf_counter() - t
    return {
        "maps": n,
        "serial_s": round(serial, 2),
        "serial_ms_per_image": round(1000 * serial / n, 2),
        "stage_s": round(stage, 2),
        "speedup": round(serial / stage, 3),
        "extrapolated_52712_s": round(stage / n * DEEPFASHION_IMAGES, 1),
    }


def bench_pairs(n: int) -> dict:
    from stages.pairs import make_pairs

    table = keypoint_table(n, np.random.default_rng(1))
    splits = {s: table.loc[table["split"] == s, "path"].tolist() for s in ("train", "test")}
    t = time.perf_counter()
    pairs, counts = make_pairs(table, splits, min_valid=8)
    return {"rows": n, "pairs": len(pairs), "seconds": round(time.perf_counter() - t, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--maps", type=int, default=2000)
    ap.add_argument("--pairs-rows", type=int, default=DEEPFASHION_IMAGES)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--only", default="keypoints,posemaps,pairs,mediapipe")
    args = ap.parse_args()
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "pairs" in only:
            print("pairs", bench_pairs(args.pairs_rows), flush=True)
        if "posemaps" in only:
            print("posemaps", bench_posemaps(tmp, args.maps), flush=True)
        if "keypoints" in only:
            print("keypoints", bench_keypoints(tmp, args.images, args.checkpoint), flush=True)
        if "mediapipe" in only:
            print("mediapipe", bench_mediapipe(tmp), flush=True)


if __name__ == "__main__":
    main()
