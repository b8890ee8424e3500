"""Training benchmarks: demo quality (SSIM / L1 of trained vs untrained NetG vs copying the
condition, on synthetic test pairs) and speed (iterations/s, images/s per Ray Train worker count).

  python bench/train.py quality --work /tmp/bench_train          # demo config, 40 x 6 tree
  python bench/train.py speed --work /tmp/bench_train --workers 1 2 --iterations 20
  python bench/train.py speed --work /tmp/bench_train --ngf 64 --autocast fp32 bf16  # on a GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import load_config  # noqa: E402
from pipeline.layout import DatasetLayout  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def annotated_synthetic_tree(root: Path, identities: int = 40, poses: int = 6) -> Path:
    """A synthetic tree annotated from its ground truth, as the test fixture does."""
    from pipeline.synthetic import write_synthetic_tree
    from stages.ground_truth import annotate_from_ground_truth

    if DatasetLayout(root).pairs_table.exists():
        return root
    write_synthetic_tree(root, identities, poses, seed=0)
    annotate_from_ground_truth(root)
    return root


def test_pair_scores(root: Path, netG, max_pairs: int) -> dict[str, float]:
    """Mean SSIM (skimage, channel_axis=-1, uint8) and mean L1 (|a - b| / 255) of NetG's
    output (eval mode) and of the copy-the-condition baseline against the target."""
    import torch
    from skimage.metrics import structural_similarity

    from pipeline.imaging import to_uint8
    from pipeline.tables import PAIRS_SCHEMA, read_table
    from pipeline.training.data import PairImages

    pairs = read_table(DatasetLayout(root).pairs_table, PAIRS_SCHEMA).query("split == 'test'")
    pairs = pairs.sample(n=min(max_pairs, len(pairs)), random_state=0)
    data = PairImages(root, pairs, None, (256, 176))
    scores = {"ssim": [], "l1": [], "copy_ssim": [], "copy_l1": []}
    netG.eval()
    with torch.no_grad():
        for i in range(len(data)):
            a, b, maps = data[i]
            fake = to_uint8(netG(a[None], maps[None])[0])
            real, cond = to_uint8(b), to_uint8(a)
            for prefix, img in (("", fake), ("copy_", cond)):
                scores[prefix + "ssim"].append(structural_similarity(real, img, channel_axis=-1))
                scores[prefix + "l1"].append(np.abs(real.astype(float) - img).mean() / 255)
    return {k: float(np.mean(v)) for k, v in scores.items()} | {"pairs": len(data)}


def quality(args) -> dict:
    from pipeline.networks import build_generator
    from pipeline.runtime import run_stage
    from pipeline.weights import load_into
    from stages.train import run_train

    root = annotated_synthetic_tree(Path(args.work) / "data")
    overrides = [f"dataset.root={root}", f"output.root={args.work}"] + [
        f"train.{s}" for s in args.set
    ]
    cfg = load_config(REPO / "configs" / "demo.yaml", overrides)
    t0 = time.time()
    if args.score_only is None:
        run_stage("train", run_train, cfg, out=Path(args.work) / "train")
    minutes = (time.time() - t0) / 60
    tc = cfg.train
    at = args.score_only or tc.iterations
    ckpt = Path(args.work) / "train" / "checkpoints" / f"netG_{at}.pth"
    import torch

    torch.manual_seed(tc.seed)  # the same init the training started from
    untrained = test_pair_scores(root, build_generator(tc.ngf), args.max_pairs)
    trained = test_pair_scores(
        root, load_into(build_generator(tc.ngf, init=False), ckpt), args.max_pairs
    )
    return {
        "config": {
            k: getattr(tc, k)
            for k in ("ngf", "ndf", "iterations", "batch_size", "lr", "num_workers")
        },
        "scored_iteration": at,
        "train_minutes": round(minutes, 2),
        "test_pairs": trained["pairs"],
        "ssim": {
            "trained": trained["ssim"],
            "untrained": untrained["ssim"],
            "copy_condition": trained["copy_ssim"],
        },
        "l1": {
            "trained": trained["l1"],
            "untrained": untrained["l1"],
            "copy_condition": trained["copy_l1"],
        },
    }


def speed(args) -> list[dict]:
    import pyarrow.parquet as pq

    from pipeline.runtime import run_stage
    from stages.train import run_train

    root = annotated_synthetic_tree(Path(args.work) / "data")
    rows = []
    for autocast in args.autocast:
        for workers in args.workers:
            out = Path(args.work) / f"speed_w{workers}_{autocast}"
            cfg = load_config(
                REPO / "configs" / "demo.yaml",
                [
                    f"dataset.root={root}",
                    f"train.num_workers={workers}",
                    f"train.ngf={args.ngf}",
                    f"train.ndf={args.ngf}",
                    f"train.iterations={args.iterations}",
                    f"train.autocast={autocast}",
                    f"train.ckpt_every={args.iterations}",
                    f"train.sample_every={args.iterations}",
                ]
                + [f"train.{s}" for s in args.set],
            )
            run_stage("train", run_train, cfg, out=out)
            # Steady state: drop the first iterations (process-group warm-up, loader start).
            secs = (
                pq.read_table(out / "log.parquet").to_pandas()["seconds"].to_numpy()[args.warmup :]
            )
            its = 1.0 / float(np.mean(secs))
            rows.append(
                {
                    "workers": workers,
                    "ngf": args.ngf,
                    "autocast": autocast,
                    "batch_per_worker": cfg.train.batch_size,
                    "iterations_per_s": round(its, 3),
                    "images_per_s": round(its * cfg.train.batch_size * workers, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("quality", "speed"):
        p = sub.add_parser(name)
        p.add_argument(
            "--work", default="/tmp/bench_train", help="Working directory (data, outputs)."
        )
        p.add_argument(
            "--set",
            nargs="*",
            default=[],
            metavar="KEY=VALUE",
            help="Extra train.KEY=VALUE overrides of configs/demo.yaml.",
        )
    q = sub.choices["quality"]
    q.add_argument("--max-pairs", type=int, default=240, help="Test pairs scored.")
    q.add_argument(
        "--score-only",
        type=int,
        default=None,
        metavar="ITER",
        help="Do not train: score the existing netG_ITER.pth of an earlier run in --work.",
    )
    s = sub.choices["speed"]
    s.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    s.add_argument("--ngf", type=int, default=8)
    s.add_argument("--iterations", type=int, default=20)
    s.add_argument("--warmup", type=int, default=5)
    s.add_argument("--autocast", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    args = parser.parse_args()
    result = quality(args) if args.mode == "quality" else speed(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
