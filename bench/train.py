"""Training benchmarks: demo quality (SSIM / L1 of trained vs untrained NetG vs copying the
condition, on synthetic test pairs) and speed (the stage's time per iteration against a bare
training step of the same nets, measured in the same run).

  python bench/train.py quality --work /tmp/bench_train          # demo config, 40 x 6 tree
  python bench/train.py speed --work /tmp/bench_train --iterations 30
      bare step vs the stage per iteration (and the streamed, NCHW data path), 2 threads
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.core.config import load_config  # noqa: E402
from pipeline.core.layout import DatasetLayout  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def annotated_synthetic_tree(root: Path, identities: int = 40, poses: int = 6) -> Path:
    """A synthetic tree annotated from its ground truth, as the test fixture does."""
    from pipeline.synthetic.tree import write_synthetic_tree
    from stages.ground_truth import annotate_from_ground_truth

    if DatasetLayout(root).pairs_table.exists():
        return root
    write_synthetic_tree(root, identities, poses, seed=0)
    annotate_from_ground_truth(root)
    return root


def quality(args) -> dict:
    """Train with configs/demo.yaml (plus --set), then the stage's own test-pair check
    (`pipeline.training.quality`): trained vs untrained NetG vs copying the condition."""
    from pipeline.cluster.stage_result import run_stage
    from pipeline.training.quality import training_quality
    from stages.train import run_train

    root = annotated_synthetic_tree(Path(args.work) / "data")
    overrides = [f"dataset.root={root}", f"output.root={args.work}"] + [
        f"train.{s}" for s in args.set
    ]
    cfg = load_config(REPO / "configs" / "demo.yaml", overrides)
    tc = cfg.train
    t0 = time.time()
    if args.score_only is None:
        run_stage(run_train, cfg, out=Path(args.work) / "train")
    minutes = (time.time() - t0) / 60
    at = args.score_only or tc.iterations
    ckpt = Path(args.work) / "train" / "checkpoints" / f"netG_{at}.pth"
    return {
        "config": {
            k: getattr(tc, k)
            for k in ("ngf", "ndf", "iterations", "batch_size", "lr", "num_workers")
        },
        "scored_iteration": at,
        "train_minutes": round(minutes, 2),
        **training_quality(root, tc, ckpt, (256, 176), args.max_pairs),
    }


def bare_step_seconds(root: Path, tc, steps: int, warmup: int = 2) -> float:
    """Median seconds of `train_step` on one fixed real batch, in this process, with the
    stage worker's torch threads and memory format: the model step alone."""

    from pipeline.training.data import PairImages, load_train_pairs
    from pipeline.training.step import (
        autocast_for,
        build_nets,
        loss_weights,
        to_device,
        train_step,
    )

    pairs, keypoints = load_train_pairs(root)
    data = PairImages(root, pairs.head(tc.batch_size), keypoints, (256, 176))
    batch = to_device(data.collate([data[i] for i in range(len(data))]), "cpu", tc)
    nets, weights, amp = build_nets(tc), loss_weights(tc), autocast_for(tc, "cpu")
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        train_step(nets, batch, weights, None, amp)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def data_seconds(root: Path, batch_size: int, batches: int = 10) -> dict:
    """Seconds per batch of the two data paths in this process: decoding every item
    (`PairImages`) vs collating from the set decoded once (`decode_in_memory`, whose
    one-off decoding time is given too)."""
    from pipeline.training.data import BatchStream, PairImages, decode_in_memory, load_train_pairs

    pairs, keypoints = load_train_pairs(root)
    streamed = PairImages(root, pairs, keypoints, (256, 176))
    t0 = time.perf_counter()
    in_memory = decode_in_memory(streamed, 2**31)
    result = {"decode_once_s": time.perf_counter() - t0}
    for name, data in (("streamed", streamed), ("in_memory", in_memory)):
        stream = BatchStream(data, batch_size, rank=0, world=1, seed=0)
        stream.next_batch()
        t0 = time.perf_counter()
        for _ in range(batches):
            stream.next_batch()
        result[f"{name}_batch_s"] = (time.perf_counter() - t0) / batches
    return {k: round(v, 4) for k, v in result.items()}


def stage_seconds(root: Path, out: Path, overrides: list[str], warmup: int) -> dict:
    """Run the train stage; its median logged seconds per iteration after `warmup`
    (batch + step + logging on rank 0), and its wall time per iteration from the call
    (Ray Train start-up, decoding and checkpoints included)."""
    import pyarrow.parquet as pq

    from pipeline.cluster.stage_result import run_stage
    from stages.train import run_train

    cfg = load_config(REPO / "configs" / "demo.yaml", [f"dataset.root={root}", *overrides])
    t0 = time.perf_counter()
    run_stage(run_train, cfg, out=out)
    wall = time.perf_counter() - t0
    secs = pq.read_table(out / "log.parquet").to_pandas()["seconds"].to_numpy()
    meta = json.loads((out / "run_meta.json").read_text())
    return {
        "per_iteration_s": float(np.median(secs[warmup:])),
        "wall_per_iteration_s": wall / cfg.train.iterations,
        "data": meta.get("data"),
    }


def speed(args) -> dict:
    """Bare step, stage (and its streamed variant) and bare step again, in one run: the
    machine drifts, so the bare time is the faster of the runs before and after."""
    import torch

    from pipeline.core.config import TrainConfig

    root = annotated_synthetic_tree(Path(args.work) / "data")
    torch.set_num_threads(args.threads)
    base = [
        f"train.ngf={args.ngf}",
        f"train.ndf={args.ngf}",
        f"train.iterations={args.iterations}",
        f"train.ckpt_every={args.iterations}",
        f"train.sample_every={args.iterations}",
        "train.quality_pairs=0",
        "train.num_workers=1",
        f"ray.num_cpus={args.threads}",
        *[f"train.{s}" for s in args.set],
    ]
    variants = {
        "stage": [],
        # The published-style data path: every item decoded on every use, one DataLoader
        # process, NCHW.
        "stage_streamed": [
            "train.memory_mb=0",
            "train.loader_workers=1",
            "train.channels_last=false",
        ],
    }
    cfg_tc = load_config(REPO / "configs" / "demo.yaml", base).train
    tc = {
        "nhwc": TrainConfig(**{**cfg_tc.__dict__, "channels_last": True}),
        "nchw": TrainConfig(**{**cfg_tc.__dict__, "channels_last": False}),
    }
    data = data_seconds(root, cfg_tc.batch_size)
    print(json.dumps({"data": data}), flush=True)
    bare = {k: [bare_step_seconds(root, t, args.bare_steps)] for k, t in tc.items()}
    stages = {}
    for name in args.variants:
        out = Path(args.work) / f"speed_{name}"
        stages[name] = stage_seconds(root, out, base + variants[name], args.warmup)
        print(json.dumps({name: stages[name]}), flush=True)
    for k, t in tc.items():
        bare[k].append(bare_step_seconds(root, t, args.bare_steps))
    # Other jobs on the machine only add time: the faster of the two is the step's own cost.
    bare_s = {k: float(np.min(v)) for k, v in bare.items()}
    stage_tc = "nhwc" if cfg_tc.channels_last else "nchw"
    result = {
        "config": {"ngf": args.ngf, "batch": cfg_tc.batch_size, "threads": args.threads},
        "bare_step_s": {k: [round(x, 3) for x in v] for k, v in bare.items()},
        "data_per_batch": data,
        "stages": stages,
        "channels_last_speedup_bare": round(bare_s["nchw"] / bare_s["nhwc"], 3),
    }
    for name, st in stages.items():
        own = bare_s["nchw"] if name == "stage_streamed" else bare_s[stage_tc]
        result[f"{name}_vs_bare_step"] = round(own / st["per_iteration_s"], 3)
        result[f"{name}_wall_vs_bare_step"] = round(own / st["wall_per_iteration_s"], 3)
    return result


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
    s.add_argument("--ngf", type=int, default=8)
    s.add_argument("--iterations", type=int, default=30)
    s.add_argument("--warmup", type=int, default=5)
    s.add_argument("--bare-steps", type=int, default=10)
    s.add_argument("--threads", type=int, default=2, help="Torch threads = Ray CPUs.")
    s.add_argument(
        "--variants",
        nargs="+",
        default=["stage", "stage_streamed"],
        choices=["stage", "stage_streamed"],
    )
    args = parser.parse_args()
    result = quality(args) if args.mode == "quality" else speed(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
