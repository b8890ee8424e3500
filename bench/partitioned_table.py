"""The partitioned keypoints table against one Parquet file, side by side in one process:
write whole, write again unchanged, write after 1% of identities were added, read whole
(sorted by path) and streamed. Prints one JSON object of seconds and ratios.

    .venv/bin/python bench/partitioned_table.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.core.atomic_io import read_arrow_table, write_table  # noqa: E402
from pipeline.core.partitioned import write_partitioned  # noqa: E402
from pipeline.core.paths import identity_groups  # noqa: E402
from pipeline.core.schemas import KEYPOINTS_SCHEMA  # noqa: E402

IMAGES_PER_IDENTITY = 6.6  # DeepFashion's


def keypoints(rows: int, first_identity: int = 0, seed: int = 0) -> pa.Table:
    """`rows` keypoints rows of DeepFashion-like paths, 6.6 per identity folder."""
    rng = np.random.default_rng(seed)
    ids = first_identity + (np.arange(rows) / IMAGES_PER_IDENTITY).astype(int)
    paths = [f"img/WOMEN/Tees/id_{i:08d}/{j:07d}_1_front.jpg" for j, i in enumerate(ids)]

    def lists(values: np.ndarray, kind: pa.DataType) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel(), kind), 18)

    columns = {
        "path": pa.array(paths),
        "file_id": pa.array([p.replace("/", "")[:-4] for p in paths]),
        "split": pa.array(["train"] * rows),
        "img_h": pa.array(np.full(rows, 256, np.int32)),
        "img_w": pa.array(np.full(rows, 176, np.int32)),
        "x": lists(rng.integers(-1, 176, (rows, 18)), pa.int32()),
        "y": lists(rng.integers(-1, 256, (rows, 18)), pa.int32()),
        "score": lists(rng.random((rows, 18), dtype=np.float32), pa.float32()),
        "n_valid": pa.array(np.full(rows, 10, np.int32)),
        "estimator": pa.array(["bench"] * rows),
        "error": pa.nulls(rows, pa.string()),
        "node": pa.nulls(rows, pa.string()),
    }
    return pa.table(columns).cast(KEYPOINTS_SCHEMA)


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    table = keypoints(args.rows)
    added = pa.concat_tables([table, keypoints(args.rows // 100, 10**7, seed=1)])
    work = Path(tempfile.mkdtemp(prefix="partitioned-bench-"))
    plain, parted = work / "plain.parquet", work / "keypoints.parquet"

    def partitioned(t: pa.Table):
        return write_partitioned(t, parted, identity_groups(t["path"].combine_chunks()),
                                 sort_by="path")  # fmt: skip

    try:
        out = {"rows": args.rows}
        out["plain_write_s"], _ = timed(lambda: write_table(table, plain, KEYPOINTS_SCHEMA))
        out["partitioned_write_s"], first = timed(lambda: partitioned(table))
        out["partitioned_unchanged_s"], same = timed(lambda: partitioned(table))
        out["plain_write_added_s"], _ = timed(lambda: write_table(added, plain, KEYPOINTS_SCHEMA))
        out["partitioned_write_added_s"], grown = timed(lambda: partitioned(added))
        out["parts"] = first.written
        out["parts_rewritten_unchanged"] = same.written
        out["parts_rewritten_1pct_added"] = grown.written
        for name, path in (("plain", plain), ("partitioned", parted)):
            out[f"{name}_read_s"], _ = timed(lambda p=path: read_arrow_table(p, KEYPOINTS_SCHEMA))
            out[f"{name}_read_streamed_s"], _ = timed(
                lambda p=path: read_arrow_table(p, KEYPOINTS_SCHEMA, streamed=True)
            )
        out["plain_mib"] = plain.stat().st_size / 2**20
        out["largest_part_mib"] = max(p.stat().st_size for p in parted.glob("part-*")) / 2**20
        out["write_ratio"] = out["partitioned_write_s"] / out["plain_write_s"]
        out["read_ratio"] = out["partitioned_read_s"] / out["plain_read_s"]
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
