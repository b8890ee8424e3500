"""Partitioned tables (pipeline.core.partitioned) on a local folder, a file:// URI and a real
S3 server: read back whole and in batches as the plain table would, an update rewrites the
parts of the buckets it touched only, a part an interrupted write left is never read, a
plain table of an earlier version becomes the folder, and other readers (pandas, Ray Data)
read the folder as one dataset."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pyarrow as pa
from test_storage import aws_env, root  # noqa: F401  (fixtures: one root of each kind)
from test_tables import keypoint_rows

from pipeline.core import storage
from pipeline.core.atomic_io import read_arrow_batches, read_arrow_table, read_table, write_table
from pipeline.core.object_path import data_path
from pipeline.core.partitioned import (
    INDEX,
    buckets_of,
    is_partitioned,
    read_index,
    write_partitioned,
)
from pipeline.core.paths import identity_groups
from pipeline.core.resumable import ResumableTable
from pipeline.core.schemas import KEYPOINTS_SCHEMA, to_arrow


def identities(n: int, per: int = 3, start: int = 0) -> pd.DataFrame:
    """`per` keypoints rows for each of `n` identities, in reverse path order (so that a
    read that did not sort would show it)."""
    rows = keypoint_rows(n * per)
    ids = [
        f"img/WOMEN/Tees/id_{start + i // per:08d}/{i % per:02d}_1_front.jpg"
        for i in range(n * per)
    ]
    rows["path"] = ids
    rows["file_id"] = [p.replace("/", "") for p in ids]
    return rows.iloc[::-1].reset_index(drop=True)


def arrow(rows: pd.DataFrame) -> pa.Table:
    return to_arrow(rows, KEYPOINTS_SCHEMA)


def keys(table: pa.Table) -> pa.Array:
    return identity_groups(table["path"].combine_chunks())


def sorted_rows(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.sort_values("path", ignore_index=True)


def assert_same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert got["path"].tolist() == want["path"].tolist()
    for column in ("x", "y", "score"):
        assert all(np.array_equal(a, b) for a, b in zip(got[column], want[column], strict=True))
    assert got["error"].tolist() == want["error"].tolist()


def test_buckets_are_stable_and_keep_an_identity_together():
    keys_ = pa.array(["MEN/Denim/id_1", "MEN/Denim/id_2", "MEN/Denim/id_1"])
    got = buckets_of(keys_, 64)
    assert got[0] == got[2] and got.dtype == np.int32 and ((got >= 0) & (got < 64)).all()
    # crc32 of the UTF-8 key: the same in every process and version (no salted hash()).
    assert got[1] == zlib.crc32(b"MEN/Denim/id_2") % 64


def test_written_whole_read_back_sorted_whole_and_in_batches(root):  # noqa: F811
    rows = identities(40)
    path = storage.join(root, "tables", "keypoints.parquet")
    done = write_partitioned(arrow(rows), path, keys(arrow(rows)), buckets=8, sort_by="path")
    index = read_index(path)
    assert is_partitioned(path) and index.buckets == 8 and index.sort_by == "path"
    assert done.written == len(index.rows) and done.kept == 0 and index.rows["rows"].sum() == 120
    assert_same_rows(read_table(path, KEYPOINTS_SCHEMA), sorted_rows(rows))
    # Columns only, the sort column left out: still in path order.
    ids = read_table(path, columns=["file_id"])["file_id"].tolist()
    assert ids == sorted_rows(rows)["file_id"].tolist()
    batches = list(read_arrow_batches(path, KEYPOINTS_SCHEMA, ["path", "error"], 7))
    assert sorted(pa.concat_tables(batches)["path"].to_pylist()) == sorted(rows["path"])
    # Each part sorted, and every identity's rows in one part.
    seen = []
    for part in index.rows["part"]:
        got = read_arrow_table(storage.join(path, part))
        assert got["path"].to_pylist() == sorted(got["path"].to_pylist())
        seen.append(set(keys(got).to_pylist()))
    assert sum(map(len, seen)) == len(set().union(*seen)) == 40


def test_an_update_rewrites_the_buckets_it_touched_only(root):  # noqa: F811
    rows = identities(40)
    path = storage.join(root, "keypoints.parquet")
    write_partitioned(arrow(rows), path, keys(arrow(rows)), buckets=16, sort_by="path")
    before = read_index(path).rows.set_index("bucket")
    stats = {p: storage.stat(storage.join(path, p)) for p in before["part"]}
    added = pd.concat([rows, identities(1, start=1000)], ignore_index=True)
    done = write_partitioned(arrow(added), path, keys(arrow(added)), buckets=16, sort_by="path")
    after = read_index(path).rows.set_index("bucket")
    changed = [b for b in after.index if before["digest"].get(b) != after.loc[b, "digest"]]
    assert done.written == len(changed) == 1 and done.kept == len(after) - 1
    assert done.removed == (1 if changed[0] in before.index else 0)
    for part in set(before["part"]) & set(after["part"]):  # untouched parts: not rewritten
        assert storage.stat(storage.join(path, part)) == stats[part]
    assert_same_rows(read_table(path, KEYPOINTS_SCHEMA), sorted_rows(added))
    # Rows of one identity removed: its bucket shrinks; a bucket left empty goes.
    last = added[~added["path"].str.contains("id_00001000")]
    done = write_partitioned(arrow(last), path, keys(arrow(last)), buckets=16, sort_by="path")
    assert done.written + done.removed >= 1
    assert_same_rows(read_table(path, KEYPOINTS_SCHEMA), sorted_rows(last))
    parts = {p.relative_to(data_path(path)).as_posix() for p in data_path(path).glob("bucket=*/*")}
    assert parts == set(read_index(path).rows["part"])


def test_a_part_an_interrupted_write_left_is_never_read_and_a_damaged_one_is_rewritten(root):  # noqa: F811
    rows = identities(10)
    path = storage.join(root, "keypoints.parquet")
    write_partitioned(arrow(rows), path, keys(arrow(rows)), buckets=4, sort_by="path")
    # An interrupted write: its new part is there, the index it would have written is not.
    stray = storage.join(path, "bucket=0", "part-interrupted.parquet")
    write_table(arrow(identities(2, start=500)), stray, KEYPOINTS_SCHEMA)
    assert_same_rows(read_table(path, KEYPOINTS_SCHEMA), sorted_rows(rows))
    write_partitioned(arrow(rows), path, keys(arrow(rows)), buckets=4, sort_by="path")
    assert not storage.exists(stray)
    # A part damaged since (its index entry unchanged) is written again, not trusted.
    part = storage.join(path, read_index(path).rows["part"].iloc[0])
    storage.write_bytes(part, storage.read_bytes(part)[:100])
    done = write_partitioned(arrow(rows), path, keys(arrow(rows)), buckets=4, sort_by="path")
    assert done.written == 1
    assert_same_rows(read_table(path, KEYPOINTS_SCHEMA), sorted_rows(rows))


def test_a_plain_table_of_an_earlier_version_becomes_the_folder(root):  # noqa: F811
    rows = identities(6)
    path = storage.join(root, "tables", "keypoints.parquet")
    write_table(arrow(sorted_rows(rows)), path, KEYPOINTS_SCHEMA)
    table = ResumableTable(path, KEYPOINTS_SCHEMA, ["path"], partition_keys=keys, sort_by="path")
    done = table.done()
    assert_same_rows(done, sorted_rows(rows))  # the plain table read as done
    more = identities(1, start=77)
    table.add(more)
    table.flush()
    table.commit(table.done())
    assert is_partitioned(path) and table.last_write.kept == 0
    assert_same_rows(read_table(path, KEYPOINTS_SCHEMA), sorted_rows(pd.concat([rows, more])))
    assert not storage.exists(storage.join(root, "tables", "keypoints.parquet.partitioning"))
    assert [f.rel for f in storage.list_files(storage.join(root, "tables"))
            if not f.rel.startswith("keypoints.parquet/")] == []  # fmt: skip


def test_an_empty_table_reads_back_empty_with_its_columns(root):  # noqa: F811
    path = storage.join(root, "keypoints.parquet")
    empty = KEYPOINTS_SCHEMA.empty_table()
    assert write_partitioned(empty, path, keys(empty), sort_by="path").written == 0
    assert read_table(path, KEYPOINTS_SCHEMA).columns.tolist() == KEYPOINTS_SCHEMA.names
    assert read_table(path, columns=["path"]).empty


def test_pandas_and_ray_data_read_the_folder_as_one_dataset(tmp_path, ray_session):
    import ray

    rows = identities(30)
    path = tmp_path / "keypoints.parquet"
    write_partitioned(arrow(rows), path, keys(arrow(rows)), buckets=8, sort_by="path")
    assert (path / INDEX).is_file()
    by_pandas = pd.read_parquet(path)
    assert sorted(by_pandas["path"]) == sorted(rows["path"])
    # The hive folder names come back as a column, the index file is skipped.
    assert set(by_pandas["bucket"].astype(int)) == set(read_index(path).rows["bucket"])
    by_ray = ray.data.read_parquet(str(path)).to_pandas()
    assert sorted(by_ray["path"]) == sorted(rows["path"])
