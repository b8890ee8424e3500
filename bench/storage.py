"""Benchmark of the storage layer: the same stages on the same synthetic images, once on
local disk and once with the dataset and the outputs on S3 (SeaweedFS's `weed mini` on
loopback, started here and stopped by its pid, as the tests do), side by side in one run;
then the requests an up-to-date rerun on S3 makes, counted by a recording proxy.

Stages timed: keypoints (imported from the synthetic ground truth CSV, as a dataset with
annotations is), posemaps, pairs, generate (a random NetG, ngf 8; test pairs capped per
identity so that generation does not dominate) and evaluate (SSIM, PSNR).

Usage: python bench/storage.py [--images 2000]
Prints one JSON object: per stage local s, S3 s and throughput ratio (local / S3), and the
up-to-date run's LIST, GET, HEAD and PUT counts, the objects it read, and the distinct
prefixes it listed (goal: LIST calls = prefixes + continuation pages, each prefix once).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

STAGES = ["keypoints", "posemaps", "pairs", "generate", "evaluate"]
POSES = 6


def overrides(data: str, out: str, ckpt: Path, endpoint: str | None = None) -> list[str]:
    sets = [
        f"dataset.root={data}",
        f"output.root={out}",
        "keypoints.annotations=ground_truth_keypoints.csv",
        "keypoints.compare=null",
        "pairs.max_pairs_per_identity=2",
        f"generate.checkpoints=[{ckpt}]",
        "generate.ngf=8",
        "generate.batch_size=16",
        "evaluate.metrics=[ssim,psnr]",
        "ray.num_cpus=2",
    ]
    return sets + ([f"storage.endpoint_override={endpoint}"] if endpoint else [])


def run(sets: list[str]) -> dict[str, float]:
    """Seconds per stage of one `run` of STAGES (the DAG's own timing of each)."""
    from pipeline.core.config import load_config
    from stages.dag import RunPlan, run_dag

    rows = run_dag(load_config(None, sets), RunPlan(list(STAGES)), echo=lambda s: None)
    assert set(rows["status"]) <= {"ran", "skipped"}, rows[["stage", "status", "reason"]]
    return dict(zip(rows["stage"], rows["seconds"].astype(float), strict=True))


def upload(local: Path, uri: str) -> float:
    from pipeline.core import storage

    t0 = time.perf_counter()
    for f in storage.list_files(local):
        storage.write_bytes(storage.join(uri, f.rel), storage.read_bytes(f.path))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()

    import torch
    from s3_server import RequestLog, running_server

    from pipeline.core import storage
    from pipeline.generator.networks import build_generator
    from pipeline.synthetic.tree import write_synthetic_tree

    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp_name:
        tmp = Path(tmp_name)
        identities = -(-args.images // POSES)
        write_synthetic_tree(tmp / "data", identities=identities, poses_per_identity=POSES)
        torch.manual_seed(0)
        ckpt = tmp / "netG_1.pth"
        torch.save(build_generator(8).state_dict(), ckpt)

        with running_server(tmp / "s3") as server:
            os.environ.update(server.env())
            storage.configure(None)
            data, out = f"s3://{server.bucket}/bench/data", f"s3://{server.bucket}/bench/out"
            uploaded = upload(tmp / "data", data)
            local = run(overrides(str(tmp / "data"), str(tmp / "out"), ckpt))
            remote = run(overrides(data, out, ckpt, server.endpoint))
            with RequestLog(server.endpoint) as proxy:
                again = run(overrides(data, out, ckpt, proxy.endpoint))
                requests, kinds = list(proxy.requests), proxy.kinds()
            assert all(s < 5 for s in again.values()), again
            lists = [parse_qs(urlsplit(t).query) for m, t in requests if "list-type=2" in t]
            # Every prefix (folder) of the dataset and output trees, at every depth.
            keys = [f.rel for f in storage.list_files(f"s3://{server.bucket}/bench")]
            tree_prefixes = {str(folder) for k in keys for folder in PurePosixPath(k).parents}

    result = {
        "images": identities * POSES,
        "upload_s": round(uploaded, 1),
        "stages": {
            s: {
                "local_s": round(local[s], 2),
                "s3_s": round(remote[s], 2),
                "ratio": round(local[s] / remote[s], 2),
            }
            for s in STAGES
        },
        "up_to_date_run": {
            "requests": kinds,
            "objects_read": sorted(
                {
                    unquote(t).split("/bench/", 1)[-1]
                    for m, t in requests
                    if m == "GET" and "list-type" not in t
                }
            ),
            "heads_by_kind": dict(
                collections.Counter(
                    os.path.splitext(unquote(t).split("?")[0])[1] or "folder"
                    for m, t in requests
                    if m == "HEAD"
                )
            ),
            # A listing of more than 1,000 keys goes on over further pages (S3's limit),
            # each a LIST of the same prefix with a continuation token.
            "list_prefixes": len({q["prefix"][0] for q in lists}),
            "prefixes_in_tree": len(tree_prefixes),
            "list_continuation_pages": sum("continuation-token" in q for q in lists),
        },
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
