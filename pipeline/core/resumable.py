"""Stage outputs that survive an interrupted run: rows are appended as part files beside
the table as they finish, a rerun reads them back as done, and the end of the run merges
everything into the table with one atomic write."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable

import pandas as pd
import pyarrow as pa

from pipeline.core.atomic_io import read_table, write_table
from pipeline.core.object_path import DataPath, data_path
from pipeline.core.partitioned import (
    PartitionWrite,
    is_partitioned,
    read_partitioned,
    write_partitioned,
)
from pipeline.core.schemas import to_arrow

_last_counter = 0


def part_counter() -> int:
    """Nanoseconds since the epoch, strictly increasing within this process (a clock set
    back must not put a later part before an earlier one)."""
    global _last_counter
    _last_counter = max(time.time_ns(), _last_counter + 1)
    return _last_counter


def part_order(path: DataPath) -> tuple[int, str]:
    """A part's place among the parts: its counter prefix (zero-padded, so names list in the
    same order; unpadded ones of older runs compare by value too), then its name."""
    head = path.name.partition("-")[0]
    return (int(head) if head.isdigit() else -1, path.name)


class ResumableTable:
    """A Parquet table under construction. `key` names the columns that identify a row: a
    later row replaces an earlier one with the same key. With `partition_keys` (a row's
    partition key, e.g. its identity, from the table) it is committed as a partitioned
    table (core.partitioned), sorted by `sort_by` within each part; `last_write` then says
    how many parts the commit rewrote."""

    def __init__(
        self,
        path: str | os.PathLike,
        schema: pa.Schema,
        key: list[str],
        flush_rows: int = 256,
        flush_seconds: float = 30.0,
        partition_keys: Callable[[pa.Table], pa.Array] | None = None,
        sort_by: str | None = None,
    ):
        self.path = data_path(path)
        self.partition_keys, self.sort_by = partition_keys, sort_by
        self.last_write: PartitionWrite | None = None
        self.parts = self.path.with_suffix(".parts")
        self.schema, self.key = schema, key
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._buffer: list[pd.DataFrame] = []
        self._last = time.monotonic()

    def done(self, with_table: bool = True) -> pd.DataFrame:
        """The table plus the parts an interrupted run left, later rows winning. Without
        `with_table` only the parts (a fresh run: the table, perhaps damaged, is replaced
        unread)."""
        frames = []
        if with_table and self.path.is_file():  # a plain table (one of an earlier version)
            frames.append(read_table(self.path, self.schema))
        elif with_table and self.partition_keys is not None and is_partitioned(self.path):
            # Less the parts that are gone (moved aside as damaged): their rows are redone.
            table = read_partitioned(self.path, skip_missing=True)
            frames.append(table.to_pandas())
        # In the order they were written, which their names say; mtimes do not (a copy or a
        # restore resets them).
        parts = sorted(self.parts.glob("*.parquet"), key=part_order)
        frames += [read_table(p, self.schema) for p in parts]
        frames = [f for f in frames if len(f)]
        if not frames:
            return self.schema.empty_table().to_pandas()
        both = pd.concat(frames, ignore_index=True)
        return both.drop_duplicates(self.key, keep="last").reset_index(drop=True)

    @property
    def unmerged(self) -> bool:
        """Whether part files wait to be merged into the table."""
        return any(self.parts.glob("*.parquet"))

    def add(self, rows: pd.DataFrame) -> None:
        """Buffer finished rows; they reach disk every `flush_rows` rows or `flush_seconds`."""
        self._buffer.append(rows)
        buffered = sum(map(len, self._buffer))
        if buffered >= self.flush_rows or time.monotonic() - self._last > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        rows = [f for f in self._buffer if len(f)]
        if rows:
            write_table(
                pd.concat(rows, ignore_index=True),
                self.parts / f"{part_counter():020d}-{uuid.uuid4().hex[:8]}.parquet",
                self.schema,
            )
        self._buffer, self._last = [], time.monotonic()

    def discard(self) -> None:
        """Forget the parts (a fresh run), and the temporary file of a part whose write was
        killed (atomic_io names it `.<part>.<random>.tmp`): it never became a part."""
        self._buffer = []
        for part in [*self.parts.glob("*.parquet"), *self.parts.glob(".*.parquet.*.tmp")]:
            part.unlink()

    def commit(self, table: pd.DataFrame | pa.Table) -> pd.DataFrame | pa.Table:
        """Write the final table atomically, then drop the parts it holds."""
        if self.partition_keys is None:
            write_table(table, self.path, self.schema)
        else:
            rows = table if isinstance(table, pa.Table) else to_arrow(table, self.schema)
            rows = rows.select(self.schema.names).cast(self.schema)
            self.last_write = write_partitioned(
                rows, self.path, self.partition_keys(rows), sort_by=self.sort_by
            )
        self.discard()
        if self.parts.is_dir():
            self.parts.rmdir()
        return table
