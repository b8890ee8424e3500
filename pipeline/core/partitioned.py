"""Partitioned Parquet tables: a table kept as Parquet parts that each hold the rows of
whole keys (identities), with an index written last that names every key's part:

    keypoints.parquet/
        _index.parquet                  key, slot, part, rows, bytes, digest: a row per key;
                                        the table's schema and sort column
        part-000003-<digest>.parquet    the rows of the keys of slot 3, sorted

A key keeps its slot for life. A write groups the rows by their keys' slots, encodes each
slot's rows and rewrites only the slots whose bytes changed (or whose file is not whole);
keys not seen before fill the newest slot up to PART_ROWS rows, then new slots. Adding 1%
of the identities therefore writes about 1% of the table plus the newest part and the
index, and changing or removing an identity's rows rewrites its part only. A slot left
without rows goes; slots that shrink stay as they are (no compaction).

The index is written after the parts and the superseded parts are removed after it, so
readers, which go through the index, never read a part an interrupted write left. pandas
(`read_parquet`), pyarrow.dataset, duckdb (`part-*.parquet`) and Ray Data read the folder
as one dataset: they skip `_`-prefixed files. The same layout serves a local folder and an
s3:// prefix (DataPath)."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import storage
from pipeline.core.object_path import DataPath, data_path

INDEX = "_index.parquet"
INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("slot", pa.int32()),
        ("part", pa.string()),
        ("rows", pa.int64()),  # of the part
        ("bytes", pa.int64()),  # of the part's file
        ("digest", pa.string()),  # of the part's file
    ]
)
# Rows a slot is filled to with new keys: about 2 MiB of keypoints rows per part, 61 parts
# at a million images, 610 at ten million (Ray Data reads 1 to 128 MiB blocks), and an
# addition of 1% rewrites at most one part beside the new ones.
PART_ROWS = 16_384


def is_partitioned(path: str | os.PathLike | DataPath) -> bool:
    """Whether `path` is a partitioned table (a folder holding an index)."""
    return (data_path(path) / INDEX).is_file()


@dataclass(frozen=True)
class PartitionIndex:
    rows: pd.DataFrame  # INDEX_SCHEMA, a row per key
    sort_by: str | None
    schema: pa.Schema  # the table's (an empty table has no part to take it from)

    def parts(self) -> pd.DataFrame:
        """A row per part (slot, part, rows, bytes, digest), in slot order."""
        cols = ["slot", "part", "rows", "bytes", "digest"]
        return self.rows[cols].drop_duplicates("slot").sort_values("slot", ignore_index=True)


def read_index(path: str | os.PathLike | DataPath) -> PartitionIndex:
    from pipeline.core.atomic_io import read_arrow_table

    table = read_arrow_table(data_path(path) / INDEX, INDEX_SCHEMA)
    meta = table.schema.metadata or {}
    sort_by = meta.get(b"sort_by", b"").decode() or None
    schema = pa.ipc.read_schema(pa.py_buffer(meta[b"schema"]))
    return PartitionIndex(table.to_pandas(), sort_by, schema)


def part_paths(
    path: str | os.PathLike | DataPath, index: PartitionIndex | None = None
) -> list[DataPath]:
    """The live parts, in slot order."""
    root = data_path(path)
    index = index or read_index(root)
    return [root / p for p in index.parts()["part"]]


def read_partitioned(
    path: str | os.PathLike | DataPath,
    columns: list[str] | None = None,
    streamed: bool = False,
    skip_missing: bool = False,
    ordered: bool = True,
) -> pa.Table:
    """The whole table (of `columns`, those it has), in the order of the sort column the
    index records, as a plain table of the same rows would read; without `ordered`, part by
    part in slot order (for a reader that needs no order: the sort costs more than the
    read). `skip_missing`: without the parts that are gone (a damaged one the DAG moved
    aside), for the table's own stage, which makes their rows again; every other reader
    fails on them."""
    from pipeline.core.atomic_io import read_arrow_table

    index = read_index(path)
    sort_by = index.sort_by if ordered else None
    wanted = columns
    if columns is not None and sort_by and sort_by not in columns:
        wanted = [*columns, sort_by]
    paths = part_paths(path, index)
    if skip_missing:
        paths = [p for p in paths if p.is_file()]
    parts = [read_arrow_table(p, None, wanted, streamed) for p in paths]
    if not parts:
        empty = index.schema.empty_table()
        return (
            empty
            if columns is None
            else empty.select([c for c in columns if c in empty.schema.names])
        )
    table = pa.concat_tables(parts, promote_options="permissive")
    del parts
    if sort_by and table.num_columns and len(paths) > 1:
        table = _sorted(table, sort_by)
    return table.select(columns) if columns is not None and wanted != columns else table


def _sorted(table: pa.Table, sort_by: str) -> pa.Table:
    """`table` in `sort_by` order, a column at a time: each column's unsorted copy is let
    go once its sorted one is made, so the peak is the table plus one column, not two
    tables (at a million keypoints rows, about 100 MB instead of 300)."""
    order = pc.sort_indices(table[sort_by])
    schema, columns = table.schema, table.columns
    del table
    for i in range(len(columns)):
        columns[i] = pc.take(columns[i], order)
    return pa.Table.from_arrays(columns, schema=schema)


@dataclass(frozen=True)
class PartitionWrite:
    written: int  # parts (re)written
    kept: int  # parts left as they were
    removed: int  # part files the index no longer names, deleted


def assign_slots(
    keys: list[str], rows: np.ndarray, held: dict[str, int], part_rows: int = PART_ROWS
) -> np.ndarray:
    """The slot of each of the distinct `keys` (with `rows` rows each): a key the index
    holds (`held`: key -> slot) keeps its slot; new keys, in key order, fill the newest
    slot while it holds under `part_rows` rows, then open new slots. A key is never split."""
    slots = np.array([held.get(k, -1) for k in keys], np.int64)
    new = np.flatnonzero(slots < 0)
    if not len(new):
        return slots
    kept = slots >= 0
    newest = int(slots[kept].max()) if kept.any() else -1
    filled = int(rows[kept & (slots == newest)].sum()) if newest >= 0 else part_rows
    for i in sorted(new, key=lambda i: keys[i]):
        if filled >= part_rows:
            newest, filled = newest + 1, 0
        slots[i], filled = newest, filled + int(rows[i])
    return slots


def write_partitioned(
    table: pa.Table,
    path: str | os.PathLike | DataPath,
    keys: pa.Array | pa.ChunkedArray,
    sort_by: str | None = None,
    part_rows: int = PART_ROWS,
) -> PartitionWrite:
    """Write `table` (sorted by `sort_by` within each part) as the partitioned table at
    `path`, a part per slot of `keys` (each row's key: its identity); see the module doc.
    A plain Parquet file at `path` (an earlier version's table) is replaced by the folder."""
    from pipeline.core.atomic_io import parquet_bytes, write_bytes_atomic

    root = data_path(path)
    plain = root.is_file()
    target = root.with_name(root.name + ".partitioning") if plain and _local(root) else root
    old = read_index(target) if is_partitioned(target) else None
    held_slots = dict(zip(old.rows["key"], old.rows["slot"], strict=True)) if old else {}
    held_parts = old.parts().set_index("slot")["digest"].to_dict() if old else {}
    distinct = pc.unique(keys)
    code = pc.index_in(keys, distinct).to_numpy(zero_copy_only=False)
    names = distinct.to_pylist()
    slot_of_key = assign_slots(names, np.bincount(code, minlength=len(names)), held_slots,
                               part_rows)  # fmt: skip
    slot_of_row = slot_of_key[code] if len(code) else np.zeros(0, np.int64)
    # Row numbers by slot, each slot's in sort order: one sort of the whole column, then a
    # take per slot (one part's copy held at a time, not the table's).
    order = np.arange(len(table)) if not sort_by else pc.sort_indices(table[sort_by]).to_numpy()
    order = order[np.argsort(slot_of_row[order], kind="stable")]
    slots, starts = np.unique(slot_of_row[order], return_index=True)
    ends = [*starts[1:], len(order)]

    def serialise(i: int) -> tuple[int, str, int, str, pa.Buffer]:
        rows = order[starts[i] : ends[i]]
        data = parquet_bytes(table.take(pa.array(rows)))
        digest = hashlib.sha256(data).hexdigest()[:20]
        slot = int(slots[i])
        return slot, f"part-{slot:06d}-{digest}.parquet", len(rows), digest, data

    # What is there, from one listing: a part is kept only whole (a damaged one the DAG
    # found is moved aside; one truncated since is rewritten), and the rest are stale.
    present = {f.rel: f.size for f in storage.list_files(str(target))}
    parts, written = {}, 0
    # Parquet encoding and hashing release the GIL: a part per core at once, a few ahead
    # (not every part's bytes held together).
    threads = os.cpu_count() or 1
    with ThreadPoolExecutor(threads) as pool:
        for lo in range(0, len(slots), 2 * threads):
            batch = range(lo, min(lo + 2 * threads, len(slots)))
            for slot, name, rows, digest, data in pool.map(serialise, batch):
                if held_parts.get(slot) != digest or present.get(name) != len(data):
                    write_bytes_atomic(target / name, data)
                    written += 1
                parts[slot] = (name, rows, len(data), digest)
    meta = {b"sort_by": (sort_by or "").encode(), b"schema": table.schema.serialize().to_pybytes()}
    per_key = [(k, int(s), *parts[int(s)]) for k, s in zip(names, slot_of_key, strict=True)]
    frame = pd.DataFrame(per_key, columns=INDEX_SCHEMA.names)
    index_table = pa.Table.from_pandas(frame, INDEX_SCHEMA.with_metadata(meta),
                                       preserve_index=False)  # fmt: skip
    write_bytes_atomic(target / INDEX, parquet_bytes(index_table))
    live = {name for name, *_ in parts.values()}
    stale = [rel for rel in present if rel.startswith("part-") and rel not in live]
    for rel in stale:
        (target / rel).unlink(missing_ok=True)
    if plain:
        # The earlier version's file goes once the folder is whole; locally the folder
        # then takes its name (a file and a folder cannot share one).
        root.unlink()
        if target != root:
            os.replace(target, root)
    return PartitionWrite(written, len(parts) - written, len(stale))


def _local(path: DataPath) -> bool:
    return isinstance(path, os.PathLike)
