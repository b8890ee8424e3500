"""Partitioned tables (pipeline.core.partitioned) on a local folder, a file:// URI and a real
S3 server: read back whole and in batches as the plain table would; an update rewrites the
parts of the identities it touched only (new ones fill the newest part, then new parts);
a part an interrupted write left is never read, a damaged one is rewritten; a plain table
of an earlier version becomes the folder; pandas and Ray Data read the folder as one
dataset."""

from __future__ import annotations

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
    assign_slots,
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


def test_slots_keep_their_keys_and_new_keys_fill_the_newest_then_new_slots():
    held = {"a": 0, "b": 1}
    slots = assign_slots(["d", "a", "c", "b", "e"], np.array([3, 5, 2, 4, 6]), held, part_rows=6)
    # a, b keep theirs; slot 1 (the newest, 4 rows) takes c (then full), d opens slot 2,
    # which, under 6 rows, takes e too (a key is never split).
    assert slots.tolist() == [2, 0, 1, 1, 2]
    assert assign_slots(["x", "y"], np.array([1, 1]), {}, part_rows=6).tolist() == [0, 0]
    assert assign_slots([], np.zeros(0, int), {}).tolist() == []


def test_written_whole_read_back_sorted_whole_and_in_batches(root):  # noqa: F811
    rows = identities(40)
    path = storage.join(root, "tables", "keypoints.parquet")
    done = write_partitioned(arrow(rows), path, keys(arrow(rows)), sort_by="path", part_rows=20)
    index = read_index(path)
    assert is_partitioned(path) and index.sort_by == "path" and len(index.rows) == 40
    parts = index.parts()
    assert done.written == len(parts) == 6 and done.kept == 0 and parts["rows"].sum() == 120
    assert_same_rows(read_table(path, KEYPOINTS_SCHEMA), sorted_rows(rows))
    # Columns only, the sort column left out: still in path order.
    ids = read_table(path, columns=["file_id"])["file_id"].tolist()
    assert ids == sorted_rows(rows)["file_id"].tolist()
    batches = list(read_arrow_batches(path, KEYPOINTS_SCHEMA, ["path", "error"], 7))
    assert sorted(pa.concat_tables(batches)["path"].to_pylist()) == sorted(rows["path"])
    # Unordered: part by part, the same rows as the batches.
    unordered = read_arrow_table(path, KEYPOINTS_SCHEMA, ["path"], ordered=False)["path"]
    assert unordered.to_pylist() == pa.concat_tables(batches)["path"].to_pylist()
    # Each part sorted, and every identity's rows in one part.
    seen = []
    for part in parts["part"]:
        got = read_arrow_table(storage.join(path, part))
        assert got["path"].to_pylist() == sorted(got["path"].to_pylist())
        seen.append(set(keys(got).to_pylist()))
    assert sum(map(len, seen)) == len(set().union(*seen)) == 40


def test_an_update_rewrites_the_parts_it_touched_only(root):  # noqa: F811
    rows = identities(40)
    path = storage.join(root, "keypoints.parquet")
    write_partitioned(arrow(rows), path, keys(arrow(rows)), sort_by="path", part_rows=20)
    before = read_index(path).parts().set_index("slot")
    stats = {p: storage.stat(storage.join(path, p)) for p in before["part"]}
    # Identities added: they fill the newest part (12 of 20 rows) and open one more; the
    # other five parts are neither written nor touched.
    added = pd.concat([rows, identities(4, start=1000)], ignore_index=True)
    done = write_partitioned(arrow(added), path, keys(arrow(added)), sort_by="path", part_rows=20)
    after = read_index(path).parts().set_index("slot")
    assert (done.written, done.kept, done.removed) == (2, 5, 1)
    assert list(after.index) == [*before.index, before.index.max() + 1]
    for part in set(before["part"]) & set(after["part"]):
        assert storage.stat(storage.join(path, part)) == stats[part]
    assert_same_rows(read_table(path, KEYPOINTS_SCHEMA), sorted_rows(added))
    # One identity's rows changed: its part only.
    changed = added.copy()
    changed.at[changed.index[changed["path"].str.contains("id_00000007")][0], "n_valid"] = 3
    done = write_partitioned(arrow(changed), path, keys(arrow(changed)), sort_by="path",
                             part_rows=20)  # fmt: skip
    assert (done.written, done.removed) == (1, 1)
    # Identities removed: a part left without rows goes, the rest stay.
    held = read_index(path).rows
    first = held.loc[held["key"] == "WOMEN/Tees/id_00000000", "slot"].iloc[0]
    gone = set(held.loc[held["slot"] == first, "key"])
    last = changed[~keys(arrow(changed)).to_pandas().isin(gone).to_numpy()]
    done = write_partitioned(arrow(last), path, keys(arrow(last)), sort_by="path", part_rows=20)
    assert (done.written, done.removed) == (0, 1)
    assert_same_rows(read_table(path, KEYPOINTS_SCHEMA), sorted_rows(last))
    files = {p.relative_to(data_path(path)).as_posix() for p in data_path(path).glob("part-*")}
    assert files == set(read_index(path).parts()["part"])


def test_a_part_an_interrupted_write_left_is_never_read_and_a_damaged_one_is_rewritten(root):  # noqa: F811
    rows = identities(10)
    path = storage.join(root, "keypoints.parquet")
    write_partitioned(arrow(rows), path, keys(arrow(rows)), sort_by="path", part_rows=6)
    # An interrupted write: its new part is there, the index it would have written is not.
    stray = storage.join(path, "part-000000-interrupted.parquet")
    write_table(arrow(identities(2, start=500)), stray, KEYPOINTS_SCHEMA)
    assert_same_rows(read_table(path, KEYPOINTS_SCHEMA), sorted_rows(rows))
    write_partitioned(arrow(rows), path, keys(arrow(rows)), sort_by="path", part_rows=6)
    assert not storage.exists(stray)
    # A part damaged since (its index entry unchanged) is written again, not trusted.
    part = storage.join(path, read_index(path).rows["part"].iloc[0])
    storage.write_bytes(part, storage.read_bytes(part)[:100])
    done = write_partitioned(arrow(rows), path, keys(arrow(rows)), sort_by="path", part_rows=6)
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
    write_partitioned(arrow(rows), path, keys(arrow(rows)), sort_by="path")
    assert (path / INDEX).is_file()
    by_pandas = pd.read_parquet(path)
    assert sorted(by_pandas["path"]) == sorted(rows["path"])
    assert list(by_pandas.columns) == KEYPOINTS_SCHEMA.names  # the index file is skipped
    by_ray = ray.data.read_parquet(str(path)).to_pandas()
    assert sorted(by_ray["path"]) == sorted(rows["path"])
