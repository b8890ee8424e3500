"""The pipeline at scale: a synthetic tree of N images in DeepFashion's proportions (6.6
per identity; 52,712 images in 7,982 identities by default), of which at most 900
identities (about 6,000 files) are drawn and the rest are hard links of their images under
new identity folders, so that a million images fit this machine's disk and inodes. Then
each stage as the CLI runs it, in its own process: wall time, the driver's peak memory and
each Ray worker's peak memory. Then the `run` DAG: a first run, an up-to-date run with a
warm content cache (twice: the second with a warm metadata cache), and a run after adding
1% new identities.

    .venv/bin/python bench/scale.py [--work /tmp/bench_scale] [--images 52712]
        [--sample-pairs 2000] [--estimator-images 100] [--added 0.01] [--no-map-export]

Prints one JSON object; each stage has wall_s, driver_peak_mib, workers_peak_mib (the
largest Ray worker) and workers (how many Ray worker processes were seen); then
up_to_date_s (the second up-to-date run), incremental_ratio (the run after adding 1% against a
full keypoints import + posemaps run; with --no-map-export, keypoints import + pairs),
generate_plan_all (generate --dry-run over every test pair: the driver's memory for
millions of jobs),
incremental_ratio_blazepose (the same with BlazePose estimating the images, from its cost
per image measured on a sample: the sample's wall time less that of half of it) and
driver_peak_gib (the largest driver of any stage).
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

from pipeline.core.legacy_csv import write_image_list, write_keypoints_csv  # noqa: E402
from pipeline.core.paths import file_id  # noqa: E402
from pipeline.synthetic.tree import (  # noqa: E402
    DEEPFASHION_IDENTITIES,
    DEEPFASHION_IMAGES,
    GROUND_TRUTH_CSV,
    deepfashion_poses,
    write_identities,
    write_synthetic_tree,
)

MIB = 1 << 20


def high_water_rss(pid: int) -> int | None:
    """The process's peak RSS so far (VmHWM), in bytes: of its own memory since its exec,
    where wait4's ru_maxrss also keeps the forking parent's (Linux carries it over exec),
    which at a million images is this bench's own tables."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class WorkerPeaks(threading.Thread):
    """Peak RSS (VmHWM) of `pid` itself, read every 0.2 s, and of every Ray worker process
    (ray::...) under it, looked for every second (the scan itself costs CPU)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.root, self.peaks, self.stop = psutil.Process(pid), {}, threading.Event()
        self.driver = 0

    def run(self) -> None:
        tick = 0
        while not self.stop.is_set():
            self.driver = max(self.driver, high_water_rss(self.root.pid) or 0)
            tick += 1
            if tick % 5 == 1:
                try:
                    children = self.root.children(recursive=True)
                except psutil.NoSuchProcess:
                    return
                for child in children:
                    try:
                        if child.name().startswith("ray::") or "ray::" in " ".join(child.cmdline()):
                            rss = high_water_rss(child.pid) or child.memory_info().rss
                            self.peaks[child.pid] = max(self.peaks.get(child.pid, 0), rss)
                    except psutil.Error:
                        continue
            time.sleep(0.2)


def measure(argv: list[str]) -> dict:
    """Run `argv`; its wall time, its own peak RSS and its Ray workers' peaks (VmHWM)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peaks = WorkerPeaks(proc.pid)
    peaks.start()
    out = proc.stdout.read()
    _, status, _ = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    peaks.stop.set()
    peaks.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{argv} failed:\n{out.decode()[-3000:]}")
    workers = sorted(peaks.peaks.values())
    return {
        "wall_s": round(wall, 2),
        # Its last sample before the exit (VmHWM only grows): growth in the last 0.2 s of a
        # stage is missed.
        "driver_peak_mib": round(peaks.driver / MIB),
        "workers_peak_mib": round(workers[-1] / MIB) if workers else 0,
        "workers": len(workers),
    }


# --no-map-export: every command runs with posemaps.export false (no npz maps).
EXTRA_SETS: list[str] = []


def cli(
    work: Path, *args: str, sets: list[str] = (), roots: tuple[str, str] | None = None
) -> list[str]:
    """The CLI's command line; `roots`: the dataset and output roots, when not under `work`."""
    argv = [sys.executable, str(REPO / "run_pipeline.py"), *args]
    data, out = roots or (work / "data", work / "out")
    base = [
        f"dataset.root={data}",
        f"output.root={out}",
        "keypoints.compare=null",
        *EXTRA_SETS,
    ]
    for s in [*base, *sets]:
        argv += ["--set", s]
    return argv


# Identities drawn for a tree; the others are hard links of their images under new
# identity folders (about 6,000 distinct files), so that a million images fit this
# machine's disk and inodes.
DRAWN_IDENTITIES = 900
# Identity numbers of the linked copies: above the drawn ones (plan_tree draws below 10M).
LINKED_ID_BASE = 10_000_000


def build_tree(root: Path, images: int) -> dict:
    """`images` in DeepFashion's proportions (6.6 per identity): up to DRAWN_IDENTITIES
    drawn, the rest hard links of a drawn identity's images (same split, same poses)."""
    if (root / GROUND_TRUTH_CSV).exists():
        return {"kept": True}
    identities = max(2, round(images * DEEPFASHION_IDENTITIES / DEEPFASHION_IMAGES))
    poses = deepfashion_poses(images, identities)
    start = time.perf_counter()
    drawn = min(identities, DRAWN_IDENTITIES)
    # Drawn evenly over the plan, so that both pose counts (6 and 7) have a drawn base.
    picked = {round(i * (identities - 1) / max(1, drawn - 1)) for i in range(drawn)}
    linked = [n for i, n in enumerate(poses) if i not in picked]
    poses = [poses[i] for i in sorted(picked)]
    table = write_synthetic_tree(root, len(poses), poses, parallel=drawn > 50)
    table["identity"] = table["path"].map(os.path.dirname)
    by_identity = {ident: rows for ident, rows in table.groupby("identity", sort=True)}
    bases: dict[int, list[pd.DataFrame]] = {}
    for rows in by_identity.values():
        bases.setdefault(len(rows), []).append(rows)
    parts = [table]
    for i, n in enumerate(linked):
        group = bases.get(n) or next(iter(bases.values()))
        base = group[i % len(group)]
        old = base["identity"].iloc[0]
        new = f"{os.path.dirname(old)}/id_{LINKED_ID_BASE + i:08d}"
        os.makedirs(root / new, exist_ok=True)
        paths = [p.replace(old, new, 1) for p in base["path"]]
        for src, dst in zip(base["path"], paths, strict=True):
            os.link(root / src, root / dst)
        parts.append(base.assign(path=paths, file_id=[file_id(p) for p in paths]))
    table = pd.concat(parts, ignore_index=True).sort_values("path", ignore_index=True)
    if len(parts) > 1:  # the lists and ground truth over every image
        for split in ("train", "test"):
            paths = table.loc[table.split == split, "path"].tolist()
            write_image_list(paths, root / f"{split}_img_list.csv")
        write_keypoints_csv(table, root / GROUND_TRUTH_CSV)
    return {
        "wall_s": round(time.perf_counter() - start, 2),
        "identities": identities,
        "drawn_identities": drawn,
        "distinct_files": int(sum(len(r) for r in by_identity.values())),
    }


def add_identities(root: Path, images: int) -> int:
    """About `images` new images in new identity folders (drawn, 6 or 7 each, split as
    the tree is), listed and with ground truth rows; returns how many."""
    identities = max(1, round(images * DEEPFASHION_IDENTITIES / DEEPFASHION_IMAGES))
    poses = deepfashion_poses(images, identities)
    # After the identities added before: a tree can grow more than once.
    added = root / "img" / "MEN" / "Added"
    first = len(os.listdir(added)) if added.is_dir() else 0
    plan = [
        (f"MEN/Added/id_9{i:07d}", "test" if i % 5 == 0 else "train", 77_000_000 + i, n)
        for i, n in enumerate(poses, start=first)
    ]
    added = write_identities(str(root), plan)
    for split in ("train", "test"):
        with open(root / f"{split}_img_list.csv", "a", newline="") as fh:
            csv.writer(fh).writerows([[im.path] for im in added if im.split == split])
    with open(root / GROUND_TRUTH_CSV, "a", newline="") as fh:
        rows = []
        for im in added:
            xy = [int(v) for pair in zip(im.x, im.y, strict=True) for v in pair]
            rows.append([file_id(im.path), 256, 176, *xy])
        csv.writer(fh).writerows(rows)
    return len(added)


def upload_dataset(root: Path, fs, prefix: str) -> dict:
    """What a run reads of the dataset (images, image lists, annotations) as objects under
    `prefix`, 32 uploads at a time; a hard-linked image is read once."""
    from concurrent.futures import ThreadPoolExecutor

    files = sorted((root / "img").rglob("*.jpg"))
    files += [root / f"{split}_img_list.csv" for split in ("train", "test")]
    files.append(root / GROUND_TRUTH_CSV)
    read: dict[int, bytes] = {}

    def put(path: Path) -> None:
        inode = path.stat().st_ino
        data = read[inode] if inode in read else read.setdefault(inode, path.read_bytes())
        with fs.open_output_stream(f"{prefix}/{path.relative_to(root).as_posix()}") as out:
            out.write(data)

    start = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, files))
    return {"objects": len(files), "wall_s": round(time.perf_counter() - start, 1)}


def first_test_pairs(root: Path, n: int) -> pd.DataFrame:
    """`n` test pairs (imgA, imgB) of the first test identities, as the pairs stage pairs."""
    test = pd.read_csv(root / "test_img_list.csv")["img"]
    rows = []
    for _, paths in test.groupby(test.map(os.path.dirname), sort=False):
        rows += [(a, b) for a in paths for b in paths if a != b]
        if len(rows) >= n:
            break
    return pd.DataFrame(rows[:n], columns=["imgA", "imgB"])


def s3_dag(work: Path, root: Path, dag: list[str]) -> dict:
    """The DAG with the dataset and the outputs on S3 (SeaweedFS's `weed mini` on
    loopback, started here and stopped by its pid, as the tests do): the upload, a first
    run, an up-to-date run, and the same up-to-date run through a recording proxy, whose
    requests are counted by kind (LIST pages, GETs of objects, HEADs, PUTs)."""
    sys.path.insert(0, str(REPO / "tests"))
    from s3_server import RequestLog, running_server

    report: dict = {}
    with running_server(work / "s3", bucket="bench-scale") as server:
        os.environ.update(server.env())
        bucket = f"s3://{server.bucket}"
        report["upload"] = upload_dataset(root, server.filesystem(), f"{server.bucket}/data")

        def run(endpoint: str) -> dict:
            sets = [*dag, f"storage.endpoint_override={endpoint}"]
            config = ["--config", str(REPO / "configs" / "demo.yaml")]
            roots = (f"{bucket}/data", f"{bucket}/out")
            return measure(cli(work, *config, "run", sets=sets, roots=roots))

        report["dag_first_run"] = run(server.endpoint)
        report["dag_up_to_date"] = run(server.endpoint)
        with RequestLog(server.endpoint) as proxy:
            report["dag_up_to_date_recorded"] = run(proxy.endpoint)
            report["up_to_date_requests"] = proxy.kinds()
    report["up_to_date_s"] = report["dag_up_to_date"]["wall_s"]
    return report


def random_checkpoint(work: Path) -> Path:
    """A NetG of ngf 8 with random weights (seeded): generation's cost, not its quality."""
    import torch

    from pipeline.generator.networks import build_generator

    torch.manual_seed(0)
    ckpt = work / "ckpt" / "netG_1.pth"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_generator(8).state_dict(), ckpt)
    return ckpt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_scale"))
    ap.add_argument("--images", type=int, default=DEEPFASHION_IMAGES)
    ap.add_argument("--sample-pairs", type=int, default=2000)
    ap.add_argument("--estimator-images", type=int, default=100)
    ap.add_argument("--added", type=float, default=0.01, help="fraction of images added")
    ap.add_argument(
        "--no-map-export",
        action="store_true",
        help="posemaps.export false: no npz maps (the scale a million images runs at here); "
        "the full run is then the keypoints import plus the pairs",
    )
    ap.add_argument(
        "--storage",
        choices=["local", "s3"],
        default="local",
        help="s3: the DAG only (first run, up to date, and the up-to-date run's requests by "
        "kind), the dataset uploaded to SeaweedFS on loopback and the outputs there, "
        "without the npz map export",
    )
    args = ap.parse_args()
    work, root = args.work, args.work / "data"
    gt = root / GROUND_TRUTH_CSV
    report: dict = {"images": args.images, "synth": build_tree(root, args.images)}
    if args.storage == "s3":
        first_test_pairs(root, 200).to_csv(work / "s3_dag_pairs.csv", index=False)
        dag = [
            f"keypoints.annotations={GROUND_TRUTH_CSV}",
            f"generate.checkpoints=[{random_checkpoint(work)}]",
            "generate.ngf=8",
            f"generate.pairs={work / 's3_dag_pairs.csv'}",
            "evaluate.metrics=[ssim,psnr]",
            "posemaps.export=false",
        ]
        report |= {"storage": "s3", **s3_dag(work, root, dag)}
        print(json.dumps(report, indent=1))
        return

    report["keypoints_import"] = measure(cli(work, "keypoints", "--annotations", str(gt)))
    sample = pd.read_csv(root / "train_img_list.csv").head(args.estimator_images)
    # BlazePose on the sample, then on half of it: the difference is its cost per image
    # without its start-up (Ray, model load), what a full run pays per image.
    for name, rows in [("sample", sample), ("half", sample.head(max(1, len(sample) // 2)))]:
        listed = work / f"estimator_{name}.csv"
        rows.to_csv(listed, index=False)
        sets = [f"dataset.train_list={listed}", "dataset.test_list=none.csv"]
        kp = ["keypoints", "--estimator", "mediapipe", "--force", "--out", str(work / f"kp_{name}")]
        report[f"keypoints_mediapipe_{name}"] = measure(cli(work, *kp, sets=sets))
        report[f"keypoints_mediapipe_{name}"]["images"] = len(rows)
    extra = len(sample) - report["keypoints_mediapipe_half"]["images"]
    per_image = max(0.0, report["keypoints_mediapipe_sample"]["wall_s"]
                    - report["keypoints_mediapipe_half"]["wall_s"]) / max(1, extra)  # fmt: skip
    report["blazepose_s_per_image"] = round(per_image, 4)
    if args.no_map_export:
        EXTRA_SETS.append("posemaps.export=false")
    else:
        report["posemaps"] = measure(cli(work, "posemaps", "--force"))
    report["pairs"] = measure(cli(work, "pairs"))
    pairs = pd.read_parquet(root / "tables" / "pairs.parquet")
    report["pairs"].update(train=int((pairs.split == "train").sum()),
                           test=int((pairs.split == "test").sum()))  # fmt: skip
    test = pairs[pairs.split == "test"].head(args.sample_pairs)
    test[["imgA", "imgB"]].to_csv(work / "sample_pairs.csv", index=False)

    ckpt = random_checkpoint(work)
    gen = work / "generated"
    generate = ["generate", "--checkpoint", str(ckpt), "--ngf", "8", "--out", str(gen)]
    report["generate"] = measure(cli(work, *generate, "--pairs", str(work / "sample_pairs.csv")))
    report["generate"]["pairs"] = len(test)
    # Planning every test pair (millions of jobs at a million images) with the forward pass
    # limited to the sample above: what a full generation's driver holds.
    report["generate_plan_all"] = measure(cli(work, *generate, "--dry-run"))
    report["generate_plan_all"]["jobs"] = 2 * int((pairs.split == "test").sum())
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
    # Twice: the goal is for a warm metadata cache, which the first run after a big stage
    # may not find (both are reported).
    report["dag_up_to_date_first"] = measure(cli(work, *config, "run", sets=dag))
    report["dag_up_to_date"] = measure(cli(work, *config, "run", sets=dag))
    added = add_identities(root, round(args.images * args.added))
    report["dag_after_adding"] = measure(cli(work, *config, "run", sets=dag))
    report["dag_after_adding"]["added"] = added
    # The summary figures: an up-to-date run, adding 1% against the full
    # keypoints (imported) + posemaps run, and the largest driver of any stage.
    # Without the map export the full run is the keypoints import and the pairs.
    second = "pairs" if args.no_map_export else "posemaps"
    full = report["keypoints_import"]["wall_s"] + report[second]["wall_s"]
    report["full_run"] = f"keypoints_import + {second}"
    report["up_to_date_s"] = report["dag_up_to_date"]["wall_s"]
    report["incremental_ratio"] = round(report["dag_after_adding"]["wall_s"] / full, 3)
    # With BlazePose instead of the import, from its cost per image on the sample: a full
    # run estimates every image, the run after adding estimates the added ones on top of
    # what it did here (which includes re-importing the CSV: an overestimate).
    blaze_full = per_image * args.images + report[second]["wall_s"]
    blaze_added = per_image * added + report["dag_after_adding"]["wall_s"]
    report["incremental_ratio_blazepose"] = round(blaze_added / blaze_full, 4)
    peaks = [
        v["driver_peak_mib"]
        for v in report.values()
        if isinstance(v, dict) and "driver_peak_mib" in v
    ]
    report["driver_peak_gib"] = round(max(peaks) / 1024, 2)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
