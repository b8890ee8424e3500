"""The stat signature of a flat folder (the 200,000 test pose maps of a million images),
side by side in one run: taken in this process, by worker processes that each walk a
share of the sub-folders (a flat folder has none: one process stats every file), and by
worker processes that also share out a flat folder's files (`SPLIT_FILES`).

    .venv/bin/python bench/signature.py [--files 200000] [--work /tmp/bench_signature]
        [--repeats 3]

Prints one JSON object: the best wall time of each way and the ratios."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.core import tree_signature  # noqa: E402


def build(folder: Path, files: int) -> None:
    """`files` small files in one folder (kept between runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    have = len(os.listdir(folder))
    for i in range(have, files):
        (folder / f"{i:08d}.npz").write_bytes(b"x" * (i % 97))


def best(repeats: int, fn) -> tuple[float, str]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=200_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_signature"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    folder = args.work / f"flat_{args.files}"
    build(folder, args.files)
    processes = max(2, min(os.cpu_count() or 1, 8))
    root = str(folder)
    report: dict = {"files": args.files, "processes": processes}
    report["in_process_s"], one = best(args.repeats, lambda: tree_signature.tree_signature(root))
    split = tree_signature.SPLIT_FILES
    tree_signature.SPLIT_FILES = args.files + 1  # the flat folder is not shared out
    try:
        report["workers_by_folder_s"], by_folder = best(
            args.repeats, lambda: tree_signature.tree_signature(root, processes)
        )
    finally:
        tree_signature.SPLIT_FILES = split
    report["workers_sharing_files_s"], shared = best(
        args.repeats, lambda: tree_signature.tree_signature(root, processes)
    )
    assert one == by_folder == shared, "the ways disagree on the signature"
    for key in ("in_process_s", "workers_by_folder_s", "workers_sharing_files_s"):
        report[key] = round(report[key], 3)
    report["speedup_vs_by_folder"] = round(
        report["workers_by_folder_s"] / report["workers_sharing_files_s"], 2
    )
    report["speedup_vs_in_process"] = round(
        report["in_process_s"] / report["workers_sharing_files_s"], 2
    )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
