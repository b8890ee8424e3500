"""Recipe of the demo's shipped checkpoint (weights/demo/): the pipeline's own stages train
a small NetG/NetD on a synthetic tree of other identities than the demo's (seed 1; the demo
draws seed 0), with BlazePose keypoints as the demo estimates them.

    .venv/bin/python scripts/train_demo_checkpoint.py --work out/demo_ckpt

One command; rerunning it continues the same training run (the DAG's resume), and
--iterations N raises the target. It prints the wall time, copies the final pair to
weights/demo/ and writes weights/demo/recipe.json (command, config, seed, training time,
sha256); --ship ITER ships the pair of a run stopped at ITER. --average-from START ships
the mean of the generator checkpoints from START to the last (every train.ckpt_every),
beside the last discriminator. Uses the GPU when one is there (train.use_gpu: auto)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.core.config import load_config  # noqa: E402
from pipeline.core.layout import OutputLayout  # noqa: E402
from pipeline.core.weights import file_sha256  # noqa: E402
from pipeline.synthetic.tree import ensure_synthetic_tree  # noqa: E402
from pipeline.training.checkpoints import average_weights  # noqa: E402
from stages.dag import RunPlan, run_dag  # noqa: E402

IDENTITIES, POSES, SEED = 300, 6, 1
CKPT_EVERY = 500
SHIPPED = REPO / "weights" / "demo"


def recipe_overrides(work: Path, iterations: int) -> list[str]:
    return [
        f"dataset.root={work / 'data'}",
        f"output.root={work}",
        "keypoints.compare=null",
        "train.ngf=8",
        "train.ndf=8",
        f"train.iterations={iterations}",
        "train.batch_size=4",
        f"train.ckpt_every={CKPT_EVERY}",
        "train.sample_every=500",
        "train.quality_pairs=64",
        "train.seed=0",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "out" / "demo_ckpt")
    parser.add_argument("--iterations", type=int, default=6000)
    parser.add_argument("--no-ship", action="store_true", help="Leave weights/demo/ alone.")
    parser.add_argument(
        "--ship",
        type=int,
        metavar="ITER",
        help="Train nothing: ship the pair the work folder holds for iteration ITER (a run "
        "stopped early; the learning rate is constant, so it equals --iterations ITER).",
    )
    parser.add_argument(
        "--average-from",
        type=int,
        metavar="START",
        help="Ship the mean of the generators saved from iteration START to the last.",
    )
    args = parser.parse_args()
    if args.ship is not None:
        command = f"scripts/train_demo_checkpoint.py --iterations {args.ship}"
        if args.average_from is not None:
            command += f" --average-from {args.average_from}"
        ship(args.work, args.ship, command, args.average_from)
        return
    t0 = time.time()
    data = args.work / "data"
    ensure_synthetic_tree(data, IDENTITIES, POSES, SEED)
    cfg = load_config(REPO / "configs" / "demo.yaml", recipe_overrides(args.work, args.iterations))
    run_dag(cfg, RunPlan(["keypoints", "posemaps", "pairs", "train"]))
    print(f"trained to iteration {args.iterations} in {(time.time() - t0) / 60:.1f} min")
    if not args.no_ship:
        command = "scripts/train_demo_checkpoint.py " + " ".join(sys.argv[1:])
        ship(args.work, args.iterations, command, args.average_from)


def ship(work: Path, iteration: int, command: str, average_from: int | None = None) -> None:
    """Copy the pair of `iteration` to weights/demo/ with its recipe: the command that makes
    it, the config, the seconds training took (from the run's log) and the files' sha256.
    With `average_from`, the generator shipped is the mean of those saved from that
    iteration on (training.checkpoints.average_weights)."""
    layout = OutputLayout(work)
    pair = [layout.checkpoints / f"net{n}_{iteration}.pth" for n in "GD"]
    averaged = list(range(average_from, iteration + 1, CKPT_EVERY)) if average_from else []
    log = pd.read_parquet(layout.train / "log.parquet")
    SHIPPED.mkdir(parents=True, exist_ok=True)
    for old in SHIPPED.glob("net[GD]_*.pth"):
        old.unlink()
    for net in pair:
        shutil.copy2(net, SHIPPED / net.name)
    if averaged:
        paths = [layout.checkpoints / f"netG_{i}.pth" for i in averaged]
        torch.save(average_weights(paths), SHIPPED / pair[0].name)
    record = {
        "command": command,
        "synthetic_tree": {"identities": IDENTITIES, "poses_per_identity": POSES, "seed": SEED},
        "config": "configs/demo.yaml",
        "overrides": recipe_overrides(Path("WORK"), iteration),
        "iterations": iteration,
        "generator_averaged_over": averaged or None,
        "train_seconds": round(float(log.loc[log["iteration"] <= iteration, "seconds"].sum())),
        "machine": f"{os.cpu_count()} CPU cores, no GPU" if not torch.cuda.is_available() else
        torch.cuda.get_device_name(0),
        "files": {n.name: file_sha256(SHIPPED / n.name) for n in pair},
    }  # fmt: skip
    (SHIPPED / "recipe.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
