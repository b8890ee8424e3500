"""Resumable tables: parts written later win over earlier ones, whatever their mtimes."""

from __future__ import annotations

import os

import pandas as pd
import pyarrow as pa

from pipeline.core.resumable import ResumableTable

SCHEMA = pa.schema([("key", pa.string()), ("value", pa.int64())])


def test_a_part_written_later_wins_even_with_an_older_mtime(tmp_path):
    table = ResumableTable(tmp_path / "t.parquet", SCHEMA, ["key"], flush_rows=1)
    table.add(pd.DataFrame({"key": ["a", "b"], "value": [1, 1]}))
    (first,) = table.parts.glob("*.parquet")
    table.add(pd.DataFrame({"key": ["a"], "value": [2]}))
    (later,) = set(table.parts.glob("*.parquet")) - {first}
    # A copy or a restore can leave the later part with the older mtime.
    old = first.stat().st_mtime_ns - 10**10
    os.utime(later, ns=(old, old))
    done = table.done().set_index("key")["value"].to_dict()
    assert done == {"a": 2, "b": 1}


def test_part_names_list_in_the_order_they_were_written(tmp_path):
    table = ResumableTable(tmp_path / "t.parquet", SCHEMA, ["key"], flush_rows=1)
    written = []
    for i in range(5):
        before = set(table.parts.glob("*.parquet"))
        table.add(pd.DataFrame({"key": [f"k{i}"], "value": [i]}))
        (new,) = set(table.parts.glob("*.parquet")) - before
        written.append(new.name)
    assert sorted(written) == written


def test_a_part_whose_write_was_killed_does_not_block_the_commit(tmp_path):
    table = ResumableTable(tmp_path / "t.parquet", SCHEMA, ["key"], flush_rows=1)
    table.add(pd.DataFrame({"key": ["a"], "value": [1]}))
    # What a SIGKILL in the middle of atomic_io's write leaves beside the parts.
    (table.parts / ".00000000000000000002-abcd1234.parquet.k3j2h1.tmp").write_bytes(b"PAR1")
    assert table.done()["key"].tolist() == ["a"]
    table.commit(table.done())
    assert not table.parts.exists()
    assert pd.read_parquet(tmp_path / "t.parquet")["key"].tolist() == ["a"]
