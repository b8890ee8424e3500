"""Partitioned Parquet tables: a table kept as one Parquet part per bucket of its rows
(`bucket = crc32(identity) mod B`, so that an identity's rows share a part) in hive-style
folders, with an index written last that names the live part of every bucket:

    keypoints.parquet/
        _index.parquet                   bucket, part, rows, bytes, digest; B, the sort column
        bucket=07/part-<digest>.parquet  the rows of bucket 7, sorted

A write serialises each bucket and leaves a bucket whose bytes have the digest the index
holds as it is (adding 1% of identities rewrites about 1% of the parts, not the table),
writes the changed parts, then the index, then removes the parts the index no longer
names. Readers go through the index, so a part an interrupted write left is never read.
pandas (`read_parquet`), pyarrow.dataset, duckdb (`bucket=*/*.parquet`) and Ray Data read
the folder as one dataset: they skip `_`-prefixed files and parse `bucket=` as a column.

The same layout serves a local folder and an s3:// prefix (DataPath)."""

from __future__ import annotations

import hashlib
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core import storage
from pipeline.core.object_path import DataPath, data_path

INDEX = "_index.parquet"
INDEX_SCHEMA = pa.schema(
    [
        ("bucket", pa.int32()),
        ("part", pa.string()),
        ("rows", pa.int64()),
        ("bytes", pa.int64()),
        ("digest", pa.string()),
    ]
)
# Ray Data's guidance is parts of 1 to 128 MiB: at 64 buckets a million keypoints rows are
# parts of 2.5 MiB (measured), ten million of about 25.
DEFAULT_BUCKETS = 64


def is_partitioned(path: str | os.PathLike | DataPath) -> bool:
    """Whether `path` is a partitioned table (a folder holding an index)."""
    return (data_path(path) / INDEX).is_file()


def buckets_of(keys: pa.Array | pa.ChunkedArray, buckets: int) -> np.ndarray:
    """The bucket of each row from its key (an identity): crc32 of the key's UTF-8 bytes
    mod `buckets`, the same in every process and version (Python's hash() is salted)."""
    unique = pc.unique(keys)
    codes = np.array([zlib.crc32(k.encode()) % buckets for k in unique.to_pylist()], np.int32)
    return codes[pc.index_in(keys, unique).to_numpy(zero_copy_only=False)]


@dataclass(frozen=True)
class PartitionIndex:
    rows: pd.DataFrame  # INDEX_SCHEMA, one row per non-empty bucket
    buckets: int
    sort_by: str | None
    schema: pa.Schema  # the table's (an empty table has no part to take it from)

    def digests(self) -> dict[int, str]:
        return dict(zip(self.rows["bucket"].tolist(), self.rows["digest"].tolist(), strict=True))


def read_index(path: str | os.PathLike | DataPath) -> PartitionIndex:
    from pipeline.core.atomic_io import read_arrow_table

    table = read_arrow_table(data_path(path) / INDEX, INDEX_SCHEMA)
    meta = table.schema.metadata or {}
    sort_by = meta.get(b"sort_by", b"").decode() or None
    schema = pa.ipc.read_schema(pa.py_buffer(meta[b"schema"]))
    buckets = int(meta[b"buckets"])
    return PartitionIndex(table.to_pandas(), buckets, sort_by, schema)


def part_paths(
    path: str | os.PathLike | DataPath, index: PartitionIndex | None = None
) -> list[DataPath]:
    """The live parts, in bucket order."""
    root = data_path(path)
    index = index or read_index(root)
    return [root / p for p in index.rows.sort_values("bucket")["part"]]


def read_partitioned(
    path: str | os.PathLike | DataPath,
    columns: list[str] | None = None,
    streamed: bool = False,
    skip_missing: bool = False,
) -> pa.Table:
    """The whole table (of `columns`, those it has), in the order of the sort column the
    index records, as a plain table of the same rows would read. `skip_missing`: without
    the parts that are gone (a damaged one the DAG moved aside), for the table's own stage,
    which makes their rows again; every other reader fails on them."""
    from pipeline.core.atomic_io import read_arrow_table

    index = read_index(path)
    sort_by = index.sort_by
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
    written: int  # buckets whose part was (re)written
    kept: int  # buckets left as they were
    removed: int  # parts the index no longer names, deleted


def _serialise(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_partitioned(
    table: pa.Table,
    path: str | os.PathLike | DataPath,
    keys: pa.Array | pa.ChunkedArray,
    buckets: int = DEFAULT_BUCKETS,
    sort_by: str | None = None,
) -> PartitionWrite:
    """Write `table` (sorted by `sort_by` within each part) as the partitioned table at
    `path`, its rows bucketed by `keys`; see the module doc. A plain Parquet file at `path`
    (an earlier version's table) is replaced by the folder."""
    from pipeline.core.atomic_io import write_bytes_atomic

    root = data_path(path)
    plain = root.is_file()
    target = root.with_name(root.name + ".partitioning") if plain and _local(root) else root
    old = read_index(target) if is_partitioned(target) else None
    held = old.digests() if old is not None and old.buckets == buckets else {}
    of_row = buckets_of(keys, buckets)
    # Row numbers by bucket, each bucket's in sort order: one sort of the whole column,
    # then a take per bucket (one bucket's copy held at a time, not the table's).
    order = np.arange(len(table)) if not sort_by else pc.sort_indices(table[sort_by]).to_numpy()
    order = order[np.argsort(of_row[order], kind="stable")]
    bounds = np.searchsorted(of_row[order], np.arange(buckets + 1))
    width = len(str(buckets - 1))

    def serialise(b: int) -> tuple[int, str, int, str, bytes]:
        rows = order[bounds[b] : bounds[b + 1]]
        data = _serialise(table.take(pa.array(rows)))
        digest = hashlib.sha256(data).hexdigest()[:20]
        return b, f"bucket={b:0{width}d}/part-{digest}.parquet", len(rows), digest, data

    # What is there, from one listing: a part is kept only whole (a damaged one the DAG
    # found is moved aside; one truncated since is rewritten), and the rest are stale.
    present = {f.rel: f.size for f in storage.list_files(str(target))}
    index, written = [], 0
    filled = [b for b in range(buckets) if bounds[b + 1] > bounds[b]]
    # Parquet encoding and hashing release the GIL: a part per core at once, a few ahead
    # (not every part's bytes held together).
    threads = os.cpu_count() or 1
    with ThreadPoolExecutor(threads) as pool:
        for lo in range(0, len(filled), 2 * threads):
            for b, name, rows, digest, data in pool.map(serialise, filled[lo : lo + 2 * threads]):
                if held.get(b) != digest or present.get(name) != len(data):
                    write_bytes_atomic(target / name, data)
                    written += 1
                index.append((b, name, rows, len(data), digest))
    meta = {
        b"buckets": str(buckets).encode(),
        b"sort_by": (sort_by or "").encode(),
        b"schema": table.schema.serialize().to_pybytes(),
    }
    frame = pd.DataFrame(index, columns=INDEX_SCHEMA.names)
    index_table = pa.Table.from_pandas(
        frame, INDEX_SCHEMA.with_metadata(meta), preserve_index=False
    )
    write_bytes_atomic(target / INDEX, _serialise(index_table))
    live = set(frame["part"])
    stale = [rel for rel in present if rel.startswith("bucket=") and rel not in live]
    for rel in stale:
        (target / rel).unlink(missing_ok=True)
    if _local(root):
        for folder in target.glob("bucket=*"):
            if not any(folder.iterdir()):
                folder.rmdir()
    if plain:
        # The earlier version's file goes once the folder is whole; locally the folder
        # then takes its name (a file and a folder cannot share one).
        root.unlink()
        if target != root:
            os.replace(target, root)
    return PartitionWrite(written, len(index) - written, len(stale))


def _local(path: DataPath) -> bool:
    return isinstance(path, os.PathLike)
