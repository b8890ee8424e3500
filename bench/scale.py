"""The pipeline at DeepFashion scale: a synthetic tree of DeepFashion's size and proportions
(52,712 images in 7,982 identities by default), then each stage as the CLI runs it, in its
own process: wall time, the driver's peak memory and each Ray worker's peak memory. Then the
`run` DAG: an up-to-date run with a warm content cache, and a run after adding 1,000 images
against a full keypoints + posemaps run.

    .venv/bin/python bench/scale.py [--work /tmp/bench_scale] [--images 52712]
        [--sample-pairs 2000] [--estimator-images 100] [--added 1000]

Smaller --images runs the same steps on a tree in the same proportions (to extrapolate).
Prints one JSON object; each stage has wall_s, driver_peak_mib, workers_peak_mib (the
largest Ray worker) and workers (how many Ray worker processes were seen).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import ray  # noqa: F401  # puts its bundled psutil (ray/thirdparty_files) on sys.path

import psutil  # noqa: E402  # isort: skip

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.synthetic.tree import (  # noqa: E402
    DEEPFASHION_IDENTITIES,
    DEEPFASHION_IMAGES,
    GROUND_TRUTH_CSV,
    deepfashion_poses,
    write_identities,
    write_synthetic_tree,
)

MIB = 1 << 20


class WorkerPeaks(threading.Thread):
    """Peak RSS of every Ray worker process (ray::...) under `pid`, sampled every 0.2 s."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.root, self.peaks, self.stop = psutil.Process(pid), {}, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                children = self.root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for child in children:
                try:
                    if child.name().startswith("ray::") or "ray::" in " ".join(child.cmdline()):
                        rss = child.memory_info().rss
                        self.peaks[child.pid] = max(self.peaks.get(child.pid, 0), rss)
                except psutil.Error:
                    continue
            time.sleep(0.2)


def measure(argv: list[str]) -> dict:
    """Run `argv`; its wall time, its own peak RSS (wait4) and its Ray workers' peaks."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peaks = WorkerPeaks(proc.pid)
    peaks.start()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    peaks.stop.set()
    peaks.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{argv} failed:\n{out.decode()[-3000:]}")
    workers = sorted(peaks.peaks.values())
    return {
        "wall_s": round(wall, 2),
        "driver_peak_mib": round(usage.ru_maxrss * 1024 / MIB),  # ru_maxrss is in KiB
        "workers_peak_mib": round(workers[-1] / MIB) if workers else 0,
        "workers": len(workers),
    }


def cli(work: Path, *args: str, sets: list[str] = ()) -> list[str]:
    argv = [sys.executable, str(REPO / "run_pipeline.py"), *args]
    base = [
        f"dataset.root={work / 'data'}",
        f"output.root={work / 'out'}",
        "keypoints.compare=null",
    ]
    for s in [*base, *sets]:
        argv += ["--set", s]
    return argv


def build_tree(root: Path, images: int) -> dict:
    if (root / GROUND_TRUTH_CSV).exists():
        return {"kept": True}
    identities = max(2, round(images * DEEPFASHION_IDENTITIES / DEEPFASHION_IMAGES))
    start = time.perf_counter()
    write_synthetic_tree(root, identities, deepfashion_poses(images, identities), parallel=True)
    return {"wall_s": round(time.perf_counter() - start, 2), "identities": identities}


def add_images(root: Path, n: int) -> None:
    """`n` new train images in new identity folders, listed and with ground truth rows."""
    from pipeline.core.paths import file_id

    plan = [(f"MEN/Added/id_9{i:07d}", "train", 77_000_000 + i, 5) for i in range(n // 5)]
    images = write_identities(str(root), plan)
    with open(root / "train_img_list.csv", "a", newline="") as fh:
        csv.writer(fh).writerows([[im.path] for im in images])
    with open(root / GROUND_TRUTH_CSV, "a", newline="") as fh:
        rows = []
        for im in images:
            xy = [int(v) for pair in zip(im.x, im.y, strict=True) for v in pair]
            rows.append([file_id(im.path), 256, 176, *xy])
        csv.writer(fh).writerows(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_scale"))
    ap.add_argument("--images", type=int, default=DEEPFASHION_IMAGES)
    ap.add_argument("--sample-pairs", type=int, default=2000)
    ap.add_argument("--estimator-images", type=int, default=100)
    ap.add_argument("--added", type=int, default=1000)
    args = ap.parse_args()
    work, root = args.work, args.work / "data"
    gt = root / GROUND_TRUTH_CSV
    report: dict = {"images": args.images, "synth": build_tree(root, args.images)}

    report["keypoints_import"] = measure(cli(work, "keypoints", "--annotations", str(gt)))
    sample = pd.read_csv(root / "train_img_list.csv").head(args.estimator_images)
    sample.to_csv(work / "estimator_sample.csv", index=False)
    report["keypoints_mediapipe_sample"] = measure(
        cli(
            work,
            "keypoints",
            "--estimator",
            "mediapipe",
            "--force",
            "--out",
            str(work / "kp"),
            sets=[
                f"dataset.train_list={work / 'estimator_sample.csv'}",
                "dataset.test_list=none.csv",
            ],
        )  # fmt: skip
    )
    report["keypoints_mediapipe_sample"]["images"] = len(sample)
    report["posemaps"] = measure(cli(work, "posemaps", "--force"))
    report["pairs"] = measure(cli(work, "pairs"))
    pairs = pd.read_parquet(root / "tables" / "pairs.parquet")
    report["pairs"].update(train=int((pairs.split == "train").sum()),
                           test=int((pairs.split == "test").sum()))  # fmt: skip
    test = pairs[pairs.split == "test"].head(args.sample_pairs)
    test[["imgA", "imgB"]].to_csv(work / "sample_pairs.csv", index=False)

    import torch

    from pipeline.generator.networks import build_generator

    torch.manual_seed(0)
    ckpt = work / "ckpt" / "netG_1.pth"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_generator(8).state_dict(), ckpt)
    gen = work / "generated"
    report["generate"] = measure(
        cli(
            work,
            "generate",
            "--checkpoint",
            str(ckpt),
            "--ngf",
            "8",
            "--out",
            str(gen),
            "--pairs",
            str(work / "sample_pairs.csv"),
        )  # fmt: skip
    )
    report["generate"]["pairs"] = len(test)
    report["evaluate"] = measure(
        cli(
            work,
            "evaluate",
            "--generated",
            str(gen),
            "--out",
            str(work / "evaluation"),
            "--metrics",
            "ssim,psnr",
        )  # fmt: skip
    )

    # The DAG: annotations imported, no training (a random checkpoint), 200 test pairs.
    test.head(200)[["imgA", "imgB"]].to_csv(work / "dag_pairs.csv", index=False)
    dag = [
        f"keypoints.annotations={gt}",
        f"generate.checkpoints=[{ckpt}]",
        "generate.ngf=8",
        f"generate.pairs={work / 'dag_pairs.csv'}",
        "evaluate.metrics=[ssim,psnr]",
    ]
    config = ["--config", str(REPO / "configs" / "demo.yaml")]
    report["dag_first_run"] = measure(cli(work, *config, "run", sets=dag))
    report["dag_up_to_date"] = measure(cli(work, *config, "run", sets=dag))
    add_images(root, args.added)
    report["dag_after_adding"] = measure(cli(work, *config, "run", sets=dag))
    report["dag_after_adding"]["added"] = args.added
    full = report["keypoints_import"]["wall_s"] + report["posemaps"]["wall_s"]
    report["dag_after_adding"]["vs_full_keypoints_posemaps"] = round(
        report["dag_after_adding"]["wall_s"] / full, 3
    )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
