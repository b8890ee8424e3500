"""Pose-maps stage: one `<file_id>.npz` per image (legacy one-hot uint8 H x W x 18 under
`arr_0`, or gaussian), written atomically by threads of this process on one machine or by
Ray tasks on a cluster (posemaps.executor)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.cluster.stage_result import StageResult
from pipeline.core import storage
from pipeline.core.atomic_io import read_arrow_table, write_bytes_atomic, write_table
from pipeline.core.config import Config
from pipeline.core.errors import DataError
from pipeline.core.layout import SPLITS, DatasetLayout
from pipeline.core.legacy_csv import list_values
from pipeline.core.paths import relative_under
from pipeline.core.schemas import KEYPOINTS_SCHEMA
from pipeline.pose.posemap import load_posemap, out_of_image, write_posemap
from stages.spec import DATASET_ROOT, STORAGE_KEYS, STREAMED_KEYS, StageSpec

POSEMAP_META = "pose_maps.json"  # beside the maps: which kind the stage wrote there


def posemap_kind(sigma: float | None) -> dict:
    return {"kind": "one-hot"} if sigma is None else {"kind": "gaussian", "sigma": sigma}


def recorded_posemap_kind(pose_dir: Path) -> dict | None:
    """The kind of the maps under `pose_dir`: the stage's record, else the dtype of one map
    (maps written before the record existed; a gaussian sigma is then unknown, None), else
    None when there are no maps."""
    meta = pose_dir / POSEMAP_META
    if meta.is_file():
        return json.loads(meta.read_text())
    first = next(pose_dir.glob("*.npz"), None) if pose_dir.is_dir() else None
    if first is None:
        return None
    if load_posemap(first).dtype == np.uint8:
        return posemap_kind(None)
    return {"kind": "gaussian", "sigma": None}


def describe_posemap_kind(kind: dict | None) -> str:
    if kind is None:
        return "none on disk (rendered one-hot from the keypoints table)"
    if kind["kind"] == "gaussian":
        return f"gaussian sigma {kind['sigma'] if kind.get('sigma') is not None else 'unknown'}"
    return kind["kind"]


def same_kind(recorded: dict, wanted: dict) -> bool:
    sigma = recorded.get("sigma")
    return recorded["kind"] == wanted["kind"] and sigma in (None, wanted.get("sigma"))


MAP_COLUMNS = ["target", "x", "y", "img_h", "img_w"]


def write_posemaps(batch: pd.DataFrame, sigma: float | None, root: str) -> pd.DataFrame:
    """Ray Data task: write a batch of maps (targets relative to `root`); returns per map its
    target, how many present keypoints fell outside the image (they are treated as missing)
    and the node."""
    from pipeline.cluster.runtime import current_node, inject_fault

    inject_fault("posemaps")
    outside = []
    for r in batch.itertuples(index=False):
        x, y = np.asarray(r.x), np.asarray(r.y)
        write_posemap(storage.join(root, r.target), x, y, int(r.img_h), int(r.img_w), sigma)
        outside.append(out_of_image(x, y, int(r.img_h), int(r.img_w)))
    return pd.DataFrame({"target": batch["target"], "outside": outside, "node": current_node()})


POSEMAP_INDEX_SCHEMA = pa.schema(
    [
        ("target", pa.string()),  # relative to the folder that holds the map folders
        ("digest", pa.string()),
        # Ray node id of the task that wrote the map (null in older indexes).
        ("node", pa.string()),
    ],
    metadata={"optional": "node"},
)


def row_digests(rows: pa.Table, sigma: float | None) -> pa.Array:
    """What each map is made from (frame size, keypoints, sigma): a map whose digest is
    unchanged is up to date, however old its file."""
    if not len(rows):
        return pa.array([], pa.string())
    tail = repr(sigma).encode()
    digests = []
    # One int64 row per map, from Arrow's buffers, hashed row by row, DIGEST_ROWS at a
    # time (a million rows' matrix is 300 MB).
    for start in range(0, len(rows), DIGEST_ROWS):
        block = rows.slice(start, DIGEST_ROWS)
        sizes = [block[c].to_numpy() for c in ("img_h", "img_w")]
        xy = [list_values(block[c]) for c in ("x", "y")]
        values = np.column_stack([*sizes, *xy]).astype(np.int64)
        digests += [hashlib.blake2b(v.tobytes() + tail, digest_size=12).hexdigest()
                    for v in values]  # fmt: skip
    return pa.array(digests, pa.string())


DIGEST_ROWS = 65_536


def read_index(layout: DatasetLayout) -> pa.Table:
    """The index of the maps on disk (target, digest, node), one row per target (its
    last), targets relative to the layout's root. Indexes written before targets were
    relative held absolute paths: those under this root are translated, others (a copied
    tree's original) are not ours and are dropped, so nothing outside this root is ever
    deleted. In Arrow: a million rows, no Python object each."""
    if not layout.posemap_index.is_file():
        return POSEMAP_INDEX_SCHEMA.empty_table()
    index = read_arrow_table(layout.posemap_index, POSEMAP_INDEX_SCHEMA, streamed=True)
    absolute = pc.starts_with(index["target"], "/")
    if pc.any(absolute).as_py():
        root = layout.root.resolve()
        rel = [relative_under(t, root) if t.startswith("/") else t
               for t in index["target"].to_pylist()]  # fmt: skip
        index = index.set_column(0, "target", pa.array(rel, pa.string()))
        index = index.filter(pc.is_valid(index["target"]))
    codes = pc.dictionary_encode(index["target"].combine_chunks())
    if len(codes.dictionary) == len(index):
        return index
    last = np.full(len(codes.dictionary), -1)
    np.maximum.at(last, codes.indices.to_numpy(), np.arange(len(index)))
    return index.take(np.sort(last))


# What planning reads of the keypoints table: no paths, scores or estimator.
PLAN_COLUMNS = ["file_id", "split", "error", "img_h", "img_w", "x", "y"]


def plan_posemaps(
    table: pa.Table, layout: DatasetLayout, sigma: float | None, force: bool
) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """(rows whose map must be (re)written, with MAP_COLUMNS; the target and digest of
    every row that has a map; rows left out counted by reason). In Arrow: a million
    rows' keypoints never become a Python object each, only those of a batch being
    written."""
    excluded: dict[str, int] = {}
    has_error = pc.is_valid(table["error"])
    excluded["keypoint error"] = pc.sum(has_error).as_py() or 0
    listed = pc.fill_null(pc.is_in(table["split"], value_set=pa.array(SPLITS)), False)
    unlisted = pc.and_(pc.invert(has_error), pc.invert(listed))
    excluded["no train/test split"] = pc.sum(unlisted).as_py() or 0
    keep = pc.and_(pc.invert(has_error), listed)
    # Not copied when every row has a map (the usual case: 200 MB at a million rows).
    rows = table if pc.all(keep).as_py() is not False else table.filter(keep)
    target, names = layout.posemap_names(rows["split"], rows["file_id"])
    mapped = pa.table({"target": target, "digest": row_digests(rows, sigma)})
    todo = np.ones(len(rows), bool)
    if not force:
        index = read_index(layout)
        indexed = index["digest"].take(pc.index_in(target, value_set=index["target"]))
        del index  # before the folder listings: the driver's peak at a million maps
        # One listing per folder, not a stat (on S3 a request) per map.
        present = np.zeros(len(rows), bool)
        for split in SPLITS:
            mine = pc.equal(rows["split"], split)
            on_disk = pa.array(storage.file_names(layout.posemap_dir(split)), pa.string())
            found = pc.is_in(names.filter(mine), value_set=on_disk)
            present[pc.fill_null(mine, False).to_numpy(zero_copy_only=False)] = found.to_numpy(
                zero_copy_only=False
            )
        up_to_date = pc.fill_null(
            pc.and_(pc.equal(indexed, mapped["digest"]), pa.array(present)), False
        )
        up_to_date = up_to_date.to_numpy(zero_copy_only=False)
        excluded["up to date"] = int(up_to_date.sum())
        todo = ~up_to_date
    rows = rows.filter(pa.array(todo)).append_column("target", target.filter(pa.array(todo)))
    return rows.select(MAP_COLUMNS), mapped, {k: v for k, v in excluded.items() if v}


def write_maps(
    rows: pa.Table, layout: DatasetLayout, sigma: float | None, cfg: Config, progress: bool
) -> tuple[int, pd.Series, str]:
    """Write the maps of `rows` in batches of posemaps.batch_size, in Ray tasks or in this
    process (`choose_executor`): (keypoints that fell outside their image, the node that
    wrote each map by target, where they were written)."""
    from pipeline.cluster.batch_stream import (
        Tasks,
        choose_executor,
        consume,
        map_ahead,
        run_batches,
    )
    from pipeline.cluster.runtime import init_ray

    opts = cfg.posemaps
    outside, written = 0, []

    def record(done: pd.DataFrame) -> int:
        nonlocal outside
        outside += int(done["outside"].sum())
        written.append(done.set_index("target")["node"])
        return len(done)

    root = storage.absolute(layout.root)
    executor = choose_executor(opts.executor, len(rows), None, None, cfg.ray.address,
                               models=False)  # fmt: skip
    if executor.name == "ray":
        init_ray(cfg.ray)
        step = Tasks(write_posemaps, {"sigma": sigma, "root": root}, batch_format="pandas",
                     num_cpus=1)  # fmt: skip
        run_batches(rows.to_pandas(), opts.batch_size, [step], label="posemaps",
                    unit="map", handle=record, progress=progress,
                    stall_timeout=cfg.ray.stall_timeout_s)  # fmt: skip
    else:
        from concurrent.futures import ThreadPoolExecutor

        # A batch becomes pandas (an array per keypoints cell) only when it is written: a
        # million rows at once were 600 MB.
        batches = (rows.slice(i, opts.batch_size).to_pandas()
                   for i in range(0, len(rows), opts.batch_size))  # fmt: skip
        # zlib releases the GIL: threads compress maps side by side. Ctrl-C cancels the
        # batches not started and lets each thread finish the one it writes.
        threads = max(1, os.cpu_count() or 1)
        pool = ThreadPoolExecutor(threads)
        try:
            consume(map_ahead(pool, lambda b: write_posemaps(b, sigma, root), batches, 2 * threads),
                    total=len(rows), label="posemaps", unit="map", handle=record,
                    progress=progress, stall_timeout=cfg.ray.stall_timeout_s)  # fmt: skip
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    nodes = pd.concat(written) if written else pd.Series(name="node", dtype=object)
    return outside, nodes, executor.reason


def run_posemaps(
    cfg: Config,
    sigma: float | None = None,
    force: bool = False,
    out: str | None = None,
    progress: bool = True,
) -> StageResult:
    """Write the pose map of every keypoints row without an error (posemaps.executor)."""
    result = StageResult("posemaps")
    source = DatasetLayout(cfg.dataset.root)
    layout = DatasetLayout(out or cfg.dataset.root)
    if not source.keypoints_table.exists():
        raise DataError(
            f"no keypoints table at {source.keypoints_table}: run the keypoints stage first"
        )
    # In any order: the maps and their index are keyed by target.
    table = read_arrow_table(source.keypoints_table, KEYPOINTS_SCHEMA, PLAN_COLUMNS,
                             streamed=True, ordered=False)  # fmt: skip
    sigma = sigma if sigma is not None else cfg.posemaps.gaussian_sigma
    wanted = posemap_kind(sigma)
    rows, mapped, excluded = plan_posemaps(table, layout, sigma, force)
    result.rows_in, result.skipped = len(table), excluded.get("up to date", 0)
    del table
    outside, before = 0, read_index(layout)
    # The node that wrote each map: the one recorded, or this run's.
    node = before["node"].take(pc.index_in(mapped["target"], value_set=before["target"]))
    if len(rows):
        outside, written, where = write_maps(rows, layout, sigma, cfg, progress)
        result.notes.append(f"written {where}")
        at = pc.index_in(mapped["target"], value_set=pa.array(written.index, pa.string()))
        now = pa.array(written.to_numpy(), pa.string()).take(at)
        node = pc.if_else(pc.is_valid(at), now, node)
    # Maps of images no longer in the table go; the index records what each map holds and
    # which node wrote it.
    gone = before["target"].filter(pc.invert(pc.is_in(before["target"], mapped["target"])))
    for target in gone.to_pylist():
        storage.delete(storage.safe_join(layout.root, target, "pose-map index"))
    index = mapped.append_column("node", node)
    write_table(index, layout.posemap_index, POSEMAP_INDEX_SCHEMA)
    for split in SPLITS:
        meta = layout.posemap_dir(split) / POSEMAP_META
        # Rewritten only when it changes: downstream stages digest the maps folder by mtimes.
        record = json.dumps(wanted).encode()
        unchanged = meta.is_file() and meta.read_bytes() == record
        if layout.posemap_dir(split).is_dir() and not unchanged:
            write_bytes_atomic(meta, record)
    result.rows_out = len(rows)
    result.errors = excluded.get("keypoint error", 0)
    result.outputs = {f"{s}_pose_maps": str(layout.posemap_dir(s)) for s in SPLITS}
    result.notes.append(
        f"{'gaussian sigma ' + str(sigma) if sigma is not None else 'one-hot'} maps; "
        f"{outside} out-of-image keypoint(s) treated as missing"
    )
    result.notes += [f"not written ({reason}): {n}" for reason, n in excluded.items()]
    if len(gone):
        result.notes.append(
            f"{len(gone)} map(s) of images no longer in the keypoints table removed"
        )
    return result.finish()


STAGE = StageSpec(
    name="posemaps",
    version=1,
    run=lambda cfg, fresh: run_posemaps(cfg, force=fresh),
    does=lambda cfg: (
        "write a pose map ("
        + (
            "one-hot"
            if cfg.posemaps.gaussian_sigma is None
            else f"gaussian, sigma {cfg.posemaps.gaussian_sigma}"
        )
        + ") per keypoints row that has none or whose keypoints changed"
    ),
    config_keys=("posemaps.gaussian_sigma",),
    needed=lambda cfg: (
        None
        if cfg.posemaps.export
        else "posemaps.export is off: generate and train render each pose map from the keypoints "
        "table as they load it"
    ),
    ignored_keys={
        **STORAGE_KEYS,
        **STREAMED_KEYS,
        **DATASET_ROOT,
        "posemaps.batch_size": "maps per Ray task: scheduling only",
        "posemaps.executor": "in this process or in Ray tasks: the maps are identical",
    },
    inputs=lambda cfg: [DatasetLayout(cfg.dataset.root).keypoints_table],
    outputs=lambda cfg: [DatasetLayout(cfg.dataset.root).posemap_dir(s) for s in SPLITS],
    tables=lambda cfg: [DatasetLayout(cfg.dataset.root).posemap_index],
    previous=lambda cfg: [DatasetLayout(cfg.dataset.root).posemap_dir(s) for s in SPLITS],
)
