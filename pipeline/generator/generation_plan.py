"""Planning generation over tables: the test pairs, one job per (pair, direction), the
generation manifest, what is done (by the content of each job's inputs), stale rows, and
identical jobs (B->A of (b, a) is A->B of (a, b)) made once and linked."""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import storage
from pipeline.core.atomic_io import read_arrow_batches, read_table, read_table_batches
from pipeline.core.errors import DataError
from pipeline.core.layout import DatasetLayout, GenerationLayout
from pipeline.core.legacy_csv import list_values, read_pairs_csv
from pipeline.core.object_path import DataPath, data_path
from pipeline.core.resumable import ResumableTable
from pipeline.core.schemas import KEYPOINTS_SCHEMA, MANIFEST_SCHEMA, PAIRS_SCHEMA

DIRECTIONS = tuple(GenerationLayout.DIRECTIONS)
MANIFEST = GenerationLayout.MANIFEST
MANIFEST_FLUSH_S = 20  # seconds between manifest saves during a run
TEST_SPLIT = "test"
# Columns of a generation job (one output image of one checkpoint) besides the maps' sources.
JOB_COLUMNS = [
    "checkpoint",
    "checkpoint_path",
    "direction",
    "index",
    "source_path",
    "source_id",
    "target_path",
    "target_id",
    "real_path",
    "inputs",
]
IDENTITY_KEY = ["checkpoint", "source_id", "target_id"]  # same network, same inputs: same image


# Test pairs planned (and then generated) at a time: the driver holds one block's jobs,
# whatever the number of test pairs (a million images have about 1.2 million).
PAIR_BLOCK = 100_000
PAIR_COLUMNS = ["imgA", "imgB", "fidA", "fidB", "group", "split"]


def test_pairs_source(root: str | os.PathLike, pairs_file: str | os.PathLike | None = None):
    """Where the test pairs are read from: `pairs_file` (Parquet pairs table or legacy CSV),
    else the dataset's pairs table (split test), else its legacy `test_img_pairs.csv`."""
    layout = DatasetLayout(root)
    if pairs_file is not None:
        return data_path(pairs_file)
    if layout.pairs_table.exists():
        return layout.pairs_table
    if layout.pairs_csv(TEST_SPLIT).exists():
        return layout.pairs_csv(TEST_SPLIT)
    raise DataError(
        f"no pairs under {root}: neither {layout.pairs_table} nor "
        f"{layout.pairs_csv(TEST_SPLIT)} exists; run the pairs stage first"
    )


def test_pair_blocks(
    root: str | os.PathLike,
    pairs_file: str | os.PathLike | None = None,
    limit: int | None = None,
    block: int | None = None,
) -> Iterator[pd.DataFrame]:
    """The (first `limit`) test pairs in table order, `block` at a time, each indexed by its
    0-based position among the test pairs (what the published test script counts). A
    table whose splits are all empty holds test pairs only; a legacy CSV is read whole."""
    path = test_pairs_source(root, pairs_file)
    block = block or PAIR_BLOCK
    seen = 0
    if path.suffix.lower() == ".csv":
        whole = read_pairs_csv(path, root)
        parts = (whole.iloc[i : i + block] for i in range(0, len(whole), block))
    else:
        present = storage.read_metadata(path).schema.to_arrow_schema().names
        # imgA, imgB, fidA and fidB are required (read_table_batches names those missing).
        columns = [c for c in PAIR_COLUMNS if c in present or c not in ("group", "split")]
        only_test = "split" in present and bool(
            (read_table(path, columns=["split"])["split"] != "").any()
        )
        parts = (
            rows[rows["split"] == TEST_SPLIT] if only_test else rows
            for rows in read_table_batches(path, PAIRS_SCHEMA, columns, block)
        )
    for rows in parts:
        if limit is not None:
            rows = rows.head(limit - seen)
        if len(rows):
            yield rows.set_axis(pd.RangeIndex(seen, seen + len(rows)))
        seen += len(rows)
        if limit is not None and seen >= limit:
            break
    if not seen:
        raise DataError(f"{path}: no test pairs to generate")


def read_test_pairs(
    root: str | os.PathLike, pairs_file: str | os.PathLike | None = None
) -> pd.DataFrame:
    """Every test pair in table order (test_pair_blocks in one frame)."""
    return pd.concat(list(test_pair_blocks(root, pairs_file)))


def generation_jobs(pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per (direction, n): n is the pair's index, its 0-based position among the
    test pairs (test_pair_blocks), as the published test script counts it; B->A swaps the
    roles of A and B."""
    n = pairs.index.to_numpy()
    frames = []
    for direction in DIRECTIONS:
        src, dst = ("A", "B") if direction == "AB" else ("B", "A")
        frames.append(
            pd.DataFrame(
                {
                    "direction": direction,
                    "index": n,
                    "source_path": pairs[f"img{src}"].to_numpy(),
                    "source_id": pairs[f"fid{src}"].to_numpy(),
                    "target_path": pairs[f"img{dst}"].to_numpy(),
                    "target_id": pairs[f"fid{dst}"].to_numpy(),
                }
            )
        )
    jobs = pd.concat(frames, ignore_index=True)
    jobs["real_path"] = [
        GenerationLayout.real(d, i, t)
        for d, i, t in zip(jobs["direction"], jobs["index"], jobs["target_id"], strict=True)
    ]
    return jobs


class MapSources:
    """Where each job's two pose maps come from: the legacy npz when it exists (and
    `map_files`: posemaps.export), else the keypoints table's row (rendered on the fly),
    else nothing (the job becomes an error). The maps folder is listed, and the keypoints
    table read (coordinates only, kept in Arrow), once for every block of jobs."""

    KEYPOINT_COLUMNS = ["file_id", "img_h", "img_w", "x", "y", "error"]

    def __init__(self, root: str | os.PathLike, map_files: bool = True):
        self.layout, self.map_files = DatasetLayout(root), map_files
        self._listed: set[str] | None = None
        self._keypoints: pa.Table | None = None

    def __call__(self, jobs: pd.DataFrame) -> pd.DataFrame:
        fids = pd.unique(pd.concat([jobs["source_id"], jobs["target_id"]]))
        npz = {}
        if self.map_files:
            if self._listed is None:  # one listing (on S3: LIST calls, no HEAD per map)
                self._listed = storage.file_names(self.layout.posemap_dir(TEST_SPLIT))
            npz = {f: str(self.layout.posemap(TEST_SPLIT, f)) for f in fids
                   if f"{f}.npz" in self._listed}  # fmt: skip
        lacking = [f for f in fids if f not in npz]
        keypoints = self._keypoint_rows(lacking) if lacking else {}
        out = jobs.copy()
        for role in ("source", "target"):
            out[f"{role}_map"] = [npz.get(f) for f in out[f"{role}_id"]]
            out[f"{role}_keypoints"] = [keypoints.get(f) for f in out[f"{role}_id"]]
        return out

    def _keypoint_rows(self, fids: list[str]) -> dict[str, np.ndarray]:
        """file id -> height, width, 18 x, 18 y (what posemap.render_map needs, in one flat
        array) of the rows without an error."""
        if self._keypoints is None:
            if not self.layout.keypoints_table.exists():
                return {}
            # A batch at a time: the whole table and its filtered copy would both be held.
            columns = self.KEYPOINT_COLUMNS
            kept = [pa.schema([KEYPOINTS_SCHEMA.field(c) for c in columns]).empty_table()]
            for batch in read_arrow_batches(
                self.layout.keypoints_table, KEYPOINTS_SCHEMA, columns, 1 << 16
            ):
                kept.append(batch.filter(pc.is_null(batch["error"])))
            self._keypoints = pa.concat_tables(kept)
        rows = self._keypoints.filter(pc.is_in(self._keypoints["file_id"], pa.array(fids)))
        if not len(rows):
            return {}
        xy = [list_values(rows[c]) for c in ("x", "y")]
        flat = np.column_stack([rows["img_h"].to_numpy(), rows["img_w"].to_numpy(), *xy]).astype(
            np.int32
        )
        return dict(zip(rows["file_id"].to_pylist(), flat, strict=True))


MANIFEST_KEY = ["checkpoint", "direction", "index"]


def manifest_output(out_dir: str | os.PathLike) -> ResumableTable:
    """The generation manifest, one row per output file, resumable (manifest.parts)."""
    return ResumableTable(
        data_path(out_dir) / MANIFEST,
        MANIFEST_SCHEMA,
        MANIFEST_KEY,
        flush_rows=1 << 30,
        flush_seconds=MANIFEST_FLUSH_S,
    )


def done_rows(manifest: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    """Ok manifest rows whose generated and real image files both exist."""
    done = manifest[manifest["status"] == "ok"]
    present = [
        (out_dir / f).is_file() and (out_dir / r).is_file()
        for f, r in zip(done["output_path"], done["real_path"], strict=True)
    ]
    return done[np.array(present, dtype=bool)]


def same_inputs(done: pd.DataFrame, jobs: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """Done rows made from what the matching job would use now (rows written before inputs
    were recorded count as made from it: an upgrade does not redo work)."""
    now = jobs[key + ["inputs"]].drop_duplicates(key).rename(columns={"inputs": "inputs_now"})
    rows = done.merge(now, on=key)
    keep = rows["inputs"].isna() | (rows["inputs"] == rows["inputs_now"])
    return rows[keep.to_numpy()].drop(columns="inputs_now")


# Per job, the state of each input (a content digest; on object storage the listed URI,
# size and mtime): what makes its image, and what workers key their caches on.
STATE_COLUMNS = ["source_state", "target_state", "source_map_state", "target_map_state"]


def with_input_states(jobs: pd.DataFrame, root: str, cache) -> pd.DataFrame:
    """`jobs` with STATE_COLUMNS: the digests of each job's two images and two pose maps
    (the npz file, else the keypoints row it is rendered from), by content through the
    stat-keyed `cache`."""

    guard = storage.root_guard(root)

    def image(rel: str) -> str:
        try:
            return cache.digest(storage.safe_join(root, rel, guard=guard))
        except (OSError, DataError):
            return "missing"

    def pose(npz: str | None, keypoints) -> str:
        try:  # no existence check first: on S3 each is a request
            if npz is not None:
                return cache.digest(npz)
        except FileNotFoundError:
            pass
        return "none" if keypoints is None else hashlib.blake2b(keypoints.tobytes()).hexdigest()

    images = {p: image(p) for p in pd.unique(pd.concat([jobs["source_path"], jobs["target_path"]]))}
    maps = {}
    for role in ("source", "target"):
        for fid, npz, kp in zip(jobs[f"{role}_id"], jobs[f"{role}_map"], jobs[f"{role}_keypoints"],
                                strict=True):  # fmt: skip
            if fid not in maps:
                maps[fid] = pose(npz, kp)
    return jobs.assign(
        source_state=jobs["source_path"].map(images),
        target_state=jobs["target_path"].map(images),
        source_map_state=jobs["source_id"].map(maps),
        target_map_state=jobs["target_id"].map(maps),
    )


def with_checkpoint(jobs: pd.DataFrame, ckpt: str, ckpt_digest: str, mode: str) -> pd.DataFrame:
    """The jobs of one checkpoint, each with the digest of everything that makes its image."""
    base = ["|".join(states) for states in zip(*(jobs[c] for c in STATE_COLUMNS), strict=True)]
    digests = [hashlib.blake2b(f"{b}|{ckpt_digest}|{mode}".encode(), digest_size=12).hexdigest()
               for b in base]  # fmt: skip
    return jobs.assign(checkpoint=ckpt, inputs=digests)


def reals_to_write(todo: pd.DataFrame, out_dir: DataPath) -> np.ndarray:
    """Per job, whether it writes its real image: the file is not there yet and no job
    before it writes the same one (checkpoints share one real file per pair and
    direction). One listing per real folder, so workers ask nothing per image."""
    folders = pd.unique(todo["real_path"].map(posixpath.dirname))
    present = {
        posixpath.join(folder, name)
        for folder in folders
        for name in storage.file_names(out_dir / folder)
    }
    return (~todo["real_path"].isin(present) & ~todo["real_path"].duplicated()).to_numpy()


def stale_rows(manifest: pd.DataFrame, jobs: pd.DataFrame, ckpts: list[str]) -> pd.DataFrame:
    """Rows of `ckpts` that no current job matches (a pair left the table, an index moved)
    or whose inputs changed since: their files no longer describe the pair set."""
    key = ["checkpoint", "direction", "index", "source_id", "target_id"]
    mine = manifest[manifest["checkpoint"].isin(ckpts)]
    current = same_inputs(mine, jobs, key)[key]
    flags = mine[key].merge(current.assign(_current=True), on=key, how="left")["_current"]
    return mine[flags.isna().to_numpy()]


def pending_jobs(
    jobs: pd.DataFrame, manifest: pd.DataFrame, ckpt: str, out_dir: Path
) -> pd.DataFrame:
    """Jobs of `ckpt` not yet done: no ok manifest row for the same pair and inputs, or its
    generated or real image file is gone."""
    done = done_rows(manifest[manifest["checkpoint"] == ckpt], out_dir)
    key = ["direction", "index", "source_id", "target_id"]
    if "inputs" in jobs:
        done = same_inputs(done, jobs, key)
    merged = jobs.merge(done[key].drop_duplicates(), on=key, how="left", indicator=True)
    return jobs[(merged["_merge"] == "left_only").to_numpy()].reset_index(drop=True)


def identical_jobs(todo: pd.DataFrame, done: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split pending jobs into those to run and `links`, whose image another job makes: a
    symmetric pair set holds (a, b) and (b, a), and B->A of one is A->B of the other. A
    key (IDENTITY_KEY) runs once, as its first pending job, unless `done` (ok manifest rows
    whose files exist) already has it. Links carry their source job's manifest key and
    files as `from_direction`, `from_index`, `from_output`, `from_real`."""
    source_columns = {
        "direction": "from_direction",
        "index": "from_index",
        "output_path": "from_output",
        "real_path": "from_real",
    }
    made = done.drop_duplicates(IDENTITY_KEY).rename(columns=source_columns)
    made = todo.merge(made[IDENTITY_KEY + list(source_columns.values())], on=IDENTITY_KEY)
    pending = (
        todo.merge(
            made[IDENTITY_KEY].drop_duplicates(), on=IDENTITY_KEY, how="left", indicator=True
        )
        .query("_merge == 'left_only'")
        .drop(columns="_merge")
    )
    first = ~pending.duplicated(IDENTITY_KEY)
    run = pending[first].reset_index(drop=True)
    outputs = [
        GenerationLayout.fake(c, d, i, t)
        for c, d, i, t in run[["checkpoint", "direction", "index", "target_id"]].itertuples(
            index=False
        )
    ]
    sources = run[IDENTITY_KEY + ["direction", "index", "real_path"]].assign(output_path=outputs)
    sources = sources.rename(columns=source_columns)
    waiting = pending[~first].merge(sources, on=IDENTITY_KEY)
    return run, pd.concat([made, waiting], ignore_index=True)


def remove_outputs(manifest: pd.DataFrame, stale: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    """Delete the files of `stale` rows and of real images no remaining row uses; return the
    manifest without those rows."""
    key = ["checkpoint", "direction", "index"]
    flags = manifest[key].merge(stale[key].assign(_stale=True), on=key, how="left")["_stale"]
    kept = manifest[flags.isna().to_numpy()].reset_index(drop=True)
    # Through safe_path: a manifest row never deletes outside the generation folder.
    for rel in [*stale["output_path"], *(set(stale["real_path"]) - set(kept["real_path"]))]:
        storage.delete(storage.safe_join(out_dir, rel, "generation manifest"))
    return kept


def link_or_copy(src: DataPath, dst: DataPath) -> None:
    """`dst` gets `src`'s bytes, atomically: a hard link where the filesystem allows one
    (no second copy on disk), else a copy; on object storage a server-side copy."""
    storage.copy(src, dst, link=True)


def write_identical(links: pd.DataFrame, sources: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    """Manifest rows of the links whose source job is in `sources` (manifest rows): the
    source's files when it is ok, its error otherwise."""
    status = sources[MANIFEST_KEY + ["source_id", "target_id", "status", "error"]].rename(
        columns={"direction": "from_direction", "index": "from_index"}
    )
    ready = links.merge(status, on=IDENTITY_KEY + ["from_direction", "from_index"])
    rows = []
    for r in ready.itertuples(index=False):
        rel = GenerationLayout.fake(r.checkpoint, r.direction, int(r.index), r.target_id)
        error = None if r.status == "ok" else f"{r.error} (same inputs as {r.from_output})"
        if error is None:
            try:
                link_or_copy(out_dir / r.from_output, out_dir / rel)
                if not (out_dir / r.real_path).is_file():
                    link_or_copy(out_dir / r.from_real, out_dir / r.real_path)
            except OSError as exc:
                error = f"{type(exc).__name__}: {exc}"
        rows.append(
            (
                r.checkpoint,
                r.direction,
                int(r.index),
                r.source_id,
                r.target_id,
                r.real_path,
                rel,
                "ok" if error is None else "error",
                error,
                r.inputs,
                None,
            )
        )
    return pd.DataFrame(rows, columns=MANIFEST_SCHEMA.names)


def error_reasons(manifest: pd.DataFrame, limit: int = 3) -> str:
    """The `limit` most frequent errors of the manifest's error rows, each with its count
    and one output it cost."""
    errors = manifest[manifest["status"] == "error"]
    counts = errors.groupby("error", sort=False).agg(
        n=("error", "size"), example=("output_path", "first")
    )
    counts = counts.sort_values("n", ascending=False, kind="stable")
    shown = [f"{r.n} x {r.Index} (e.g. {r.example})" for r in counts.head(limit).itertuples()]
    more = len(counts) - limit
    return "; ".join(shown) + (f"; and {more} other reason(s)" if more > 0 else "")
