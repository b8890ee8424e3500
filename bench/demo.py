"""The demo's wall time against a bare training step measured in the same run, and the
quality check the report shows (trained vs untrained NetG vs copying the condition).

  python bench/demo.py --out /tmp/bench_demo        # a fresh demo: deletes --out first

The demo runs as a user runs it (`run_pipeline.py demo`, a fresh process); the bare step
(NetG ngf 8 + NetD ndf 8, batch 8, 256x176, Adam, 2 torch threads, NCHW as in the issue
that set the goal) is timed before and after it, and the faster is the yardstick.
Goal: demo <= 300 bare steps (about 6 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.train import annotated_synthetic_tree, bare_step_seconds  # noqa: E402
from pipeline.core.config import TrainConfig  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="/tmp/bench_demo")
    parser.add_argument("--bare-steps", type=int, default=10)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    yardstick = annotated_synthetic_tree(out.parent / f"{out.name}_bare_step_data")
    tc = TrainConfig(ngf=8, ndf=8, batch_size=8, perceptual="off", channels_last=False)
    bare = [bare_step_seconds(yardstick, tc, args.bare_steps)]
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, str(REPO / "run_pipeline.py"), "demo", "--out", str(out)],
        check=True,
        cwd=REPO,
    )
    wall = time.perf_counter() - t0
    bare.append(bare_step_seconds(yardstick, tc, args.bare_steps))
    step = min(bare)  # other jobs only add time: the faster is the step's own cost
    manifest = pd.read_parquet(out / "run_manifest.parquet")
    meta = json.loads((out / "train" / "run_meta.json").read_text())
    result = {
        "demo_wall_s": round(wall, 1),
        "bare_step_s": [round(b, 3) for b in bare],
        "demo_in_bare_steps": round(wall / step, 1),
        "goal_in_bare_steps": 300,
        "stage_seconds": {
            r.stage: round(r.seconds, 1) for r in manifest.itertuples() if r.status == "ran"
        },
        "train_iterations": meta["config"]["train"]["iterations"],
        "test_quality": meta.get("test_quality"),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
