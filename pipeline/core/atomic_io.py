"""Atomic file writes (temp file, then rename) with a message naming the path and the free
space when the disk is full, and Parquet tables read and written whole. The writers and
readers also take `file://` and `s3://` URIs, which go through pipeline.core.storage
(object storage: a single PUT); local paths never do, so they behave as before."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.core.errors import DataError, DiskFullError, UnreadableTableError
from pipeline.core.paths import MANGLED_URI
from pipeline.core.schemas import optional_columns, to_arrow

if TYPE_CHECKING:
    from pipeline.core.storage import Location

# Errors that mean the filesystem is out of space (or the user out of quota).
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f}" if n < 10e6 else f"{n / 1e6:.0f}"


def _free_bytes(path: Path) -> int | None:
    """Free bytes on the filesystem `path` is (or would be) on: its nearest existing folder."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def disk_full_error(
    exc: BaseException,
    path: str | os.PathLike,
    needed: int | None = None,
    written: int | None = None,
) -> DiskFullError | None:
    """`exc` as a DiskFullError naming `path` when the write failed for want of space, else
    None. An OSError says so with its errno; torch's writer raises a RuntimeError without
    one ("unexpected pos", "basic_ios::clear: iostream error"), so that counts only while
    the filesystem has less free than the `needed` bytes. `written`: what got written
    before the failure, a lower bound when `needed` is unknown. Call it after removing the
    partial file, so the free space reported is what a retry would have."""
    path = Path(path)
    free = _free_bytes(path)
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    if code in _NO_SPACE:
        reason = os.strerror(code).lower()
    elif (
        isinstance(exc, (RuntimeError, OSError))
        and code is None
        and needed is not None
        and free is not None
        and free < needed
    ):
        reason = "no space left on device"
    else:
        return None
    if needed is not None:
        size = f"about {_mb(needed)} MB needed"
    elif written:
        size = f"more than {_mb(written)} MB needed"
    else:
        size = "size unknown"
    where = f"{_mb(free)} MB free" if free is not None else "free space unknown"
    return DiskFullError(
        f"{reason} writing {path} ({size}, {where} on the filesystem of {path}); free "
        "space or point output.root elsewhere. Nothing partial was kept."
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only on success, so a
    reader never sees a partial file and a failed write leaves nothing behind. A write
    that runs out of space raises DiskFullError; `needed` (bytes, when the caller knows
    them) goes into its message. On object storage the temporary file is local (the
    system's temporary folder) and goes up as one PUT on success."""
    path, remote = _object_store(path)
    if remote is not None:
        with _staged_upload(remote) as tmp:
            yield tmp
        return
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        # mkstemp makes 0600 files; give the result the usual umask-derived mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:
        written = None
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                written = os.path.getsize(tmp)
                os.unlink(tmp)
        full = disk_full_error(exc, path, needed, written) if isinstance(exc, Exception) else None
        if full is None:
            raise
        raise full from exc


@contextlib.contextmanager
def _staged_upload(remote: Location) -> Iterator[Path]:
    """A local temporary file for a writer that needs a path (torch.save, zip, csv),
    uploaded whole to `remote` when it finished: a single PUT, so the object appears
    whole or not at all."""
    from pipeline.core import storage

    fd, tmp = tempfile.mkstemp(prefix="posetransfer-", suffix=".upload")
    os.close(fd)
    try:
        yield Path(tmp)
        storage.write_bytes(remote, Path(tmp).read_bytes())
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _object_store(path: str | os.PathLike) -> tuple[str | os.PathLike, Location | None]:
    """(`path`, None) for a local path, unchanged; (the local path, None) for a file://
    URI; (`path`, its storage Location) for an object-store URI. Only URI strings import
    the storage layer (which imports this module for its local writes)."""
    if hasattr(path, "location"):  # an object_path.ObjectPath
        return path, path.location
    if not (isinstance(path, str) and "://" in path):
        if MANGLED_URI.match(os.fspath(path)):
            raise DataError(
                f"{os.fspath(path)!r} is a URI that went through a Path (which keeps one "
                "'/'): refused, never written as a local folder"
            )
        return path, None
    from pipeline.core import storage

    loc = storage.resolve(path)
    return (loc.path, None) if loc.is_local else (path, loc)


def write_bytes_atomic(path: str | os.PathLike, data: bytes | pa.Buffer) -> None:
    path, remote = _object_store(path)
    if remote is not None:
        from pipeline.core import storage

        storage.write_bytes(remote, data)
        return
    with atomic_path(path, needed=len(data)) as tmp:
        Path(tmp).write_bytes(data)


def parquet_bytes(table: pa.Table) -> pa.Buffer:
    """`table` as the bytes of a Parquet file, in memory without a copy (what one PUT of it
    sends; what a partitioned table's part is digested by)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue()


def write_table(df: pd.DataFrame | pa.Table, path: str | os.PathLike, schema: pa.Schema) -> None:
    """Atomically write a Parquet table with the declared schema."""
    table = df if isinstance(df, pa.Table) else to_arrow(df, schema)
    if not table.schema.equals(schema):
        table = table.select(schema.names).cast(schema)
    path, remote = _object_store(path)
    if remote is not None:
        from pipeline.core import storage

        storage.write_table(table, remote)
        return
    # The in-memory size: the file is usually smaller (compressed), never much larger.
    with atomic_path(path, needed=table.nbytes) as tmp:
        pq.write_table(table, tmp)


# What pyarrow raises for a file that is not (or no longer) a whole Parquet table.
UNREADABLE_PARQUET = (pa.ArrowInvalid, OSError)


def table_damage(path: str | os.PathLike) -> str | None:
    """Why the Parquet file at `path` cannot be read (its footer only is read), or None."""
    try:
        _footer(path)
    except UNREADABLE_PARQUET as exc:
        return str(exc).splitlines()[0]
    return None


def table_rows(path: str | os.PathLike) -> int:
    """The rows of a Parquet table, from its footer."""
    try:
        return _footer(path).num_rows
    except UNREADABLE_PARQUET as exc:
        raise _unreadable(path, exc) from None


def _footer(path: str | os.PathLike) -> pq.FileMetaData:
    path, remote = _object_store(path)
    if remote is None:
        return pq.read_metadata(path)
    from pipeline.core import storage

    return storage.read_metadata(remote)


def _unreadable(path, exc: Exception) -> UnreadableTableError:
    return UnreadableTableError(
        f"{path} is not a readable Parquet table ({exc}); it was damaged or cut short. "
        "Rerun the stage that writes it with --force (the damaged file is moved aside)."
    )


def read_table_batches(
    path: str | os.PathLike, schema: pa.Schema, columns: list[str], rows: int
) -> Iterator[pd.DataFrame]:
    """read_arrow_batches, each batch a DataFrame."""
    for batch in read_arrow_batches(path, schema, columns, rows):
        yield batch.to_pandas()


def read_arrow_batches(
    path: str | os.PathLike, schema: pa.Schema, columns: list[str], rows: int
) -> Iterator[pa.Table]:
    """A Parquet table's `columns`, `rows` at a time, in table order: its row groups are
    read one after another, so a table of millions of rows is never whole in memory (on
    object storage: ranged reads of the object). A partitioned table (core.partitioned)
    comes part by part, in slot order."""
    with contextlib.ExitStack() as stack:
        try:
            parquet = stack.enter_context(_open_parquet(path))
        except UNREADABLE_PARQUET as exc:
            # Only now is it looked for as a partitioned table (a folder cannot be opened
            # as a file): reading a plain one costs no extra stat or HEAD.
            if _table_kind(*_object_store(path)) != "partitioned":
                if isinstance(exc, FileNotFoundError):
                    raise FileNotFoundError(f"table not found: {path}") from None
                raise _unreadable(path, exc) from None
            parquet = None
        if parquet is None:
            from pipeline.core.partitioned import part_paths

            for part in part_paths(path):
                yield from read_arrow_batches(part, schema, columns, rows)
            return
        missing = [c for c in columns if c not in parquet.schema_arrow.names]
        if missing:
            raise DataError(f"{path}: missing columns {missing}")
        wanted = pa.schema([schema.field(c) for c in columns])
        for batch in parquet.iter_batches(batch_size=rows, columns=columns):
            yield pa.Table.from_batches([batch]).cast(wanted)


@contextlib.contextmanager
def _open_parquet(path) -> Iterator[pq.ParquetFile]:
    """A Parquet file, local or an object (read in ranges, never whole)."""
    from pipeline.core import storage

    loc = storage.resolve(path)
    with contextlib.ExitStack() as stack:
        source = loc.path if loc.is_local else stack.enter_context(loc.fs.open_input_file(loc.path))
        yield stack.enter_context(pq.ParquetFile(source))


STREAM_ROWS = 65_536


def _read_streamed(path, columns: list[str] | None) -> pa.Table:
    """A Parquet table decoded in batches; of `columns`, those it has."""
    with _open_parquet(path) as parquet:
        names = parquet.schema_arrow.names
        present = names if columns is None else [c for c in columns if c in names]
        batches = list(parquet.iter_batches(batch_size=STREAM_ROWS, columns=present))
        schema = pa.schema([parquet.schema_arrow.field(c) for c in present])
    return pa.Table.from_batches(batches, schema=schema)


def read_table(
    path: str | os.PathLike, schema: pa.Schema | None = None, columns: list[str] | None = None
) -> pd.DataFrame:
    """Read a Parquet table (only `columns`, when given); with `schema`, check the columns
    it must have."""
    return read_arrow_table(path, schema, columns).to_pandas()


def _table_kind(path, remote) -> str | None:
    """ "plain" (a Parquet file), "partitioned" (a folder with an index: core.partitioned)
    or None (neither), from one stat (on object storage one HEAD, as an exists() was)."""
    from pipeline.core.partitioned import INDEX

    if remote is None:
        path = Path(path)
        if path.is_file():
            return "plain"
        return "partitioned" if (path / INDEX).is_file() else None
    from pipeline.core import storage
    from pipeline.core.object_path import data_path

    found = storage.info(remote).type
    if found == pafs.FileType.File:
        return "plain"
    if found == pafs.FileType.Directory and (data_path(path) / INDEX).is_file():
        return "partitioned"
    return None


def read_arrow_table(
    path: str | os.PathLike,
    schema: pa.Schema | None = None,
    columns: list[str] | None = None,
    streamed: bool = False,
    ordered: bool = True,
) -> pa.Table:
    """read_table in Arrow (a million rows of keypoints, without a Python object each).
    `streamed`: decoded STREAM_ROWS rows at a time (reading a million rows of keypoints
    whole peaked 650 MB above the table itself). Without `ordered`, a partitioned table
    comes in slot order, not sorted back (core.partitioned)."""
    path, remote = _object_store(path)
    kind = _table_kind(path, remote)
    if kind is None:
        raise FileNotFoundError(f"table not found: {path}")
    if kind == "partitioned":
        from pipeline.core.partitioned import read_partitioned

        read = partial(read_partitioned, streamed=streamed, ordered=ordered)
    elif streamed:
        read = _read_streamed
    elif remote is None:
        read = pq.read_table
    else:
        from pipeline.core import storage

        read = storage.read_table
    try:
        table = read(Path(path) if remote is None else remote, columns=columns)
    except UNREADABLE_PARQUET as exc:
        raise _unreadable(path, exc) from None
    if schema is not None:
        if columns is not None:
            schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
        missing = [n for n in schema.names if n not in table.schema.names]
        # Columns added later (`schema` metadata "optional") read as nulls from older files.
        if [n for n in missing if n not in optional_columns(schema)]:
            raise DataError(f"{path}: missing columns {missing}")
        for name in missing:
            table = table.append_column(name, pa.nulls(len(table), schema.field(name).type))
        table = table.select(schema.names)
    return table
