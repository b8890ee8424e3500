"""The published scripts' legacy CSVs: image lists, pairs and keypoints, read with their
columns and paths checked, written atomically. Their columns are declared here once."""

from __future__ import annotations

import csv
import io
import os
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pipeline.core import storage
from pipeline.core.atomic_io import atomic_path
from pipeline.core.errors import DataError
from pipeline.core.object_path import DataPath, data_path
from pipeline.core.paths import check_paths, file_id, identity_group
from pipeline.core.schemas import KEYPOINTS_SCHEMA, to_arrow
from pipeline.pose.skeleton import N_KEYPOINTS

# Legacy CSV columns of the published scripts.
KEYPOINT_CSV_COLUMNS = ["file_id", "img_h", "img_w"] + [
    f"p{k}_{axis}" for k in range(N_KEYPOINTS) for axis in ("x", "y")
]
IMAGE_LIST_COLUMNS = ["img"]
CSV_BLOCK = 50_000  # rows formatted at a time
PAIRS_CSV_COLUMNS = ["imgA", "imgB"]


# What makes the csv module quote a field (QUOTE_MINIMAL): the delimiter, the quote, a
# line break.
NEEDS_QUOTES = r'[,"\r\n]'


def append_rows(fh: BinaryIO, columns: dict[str, object], eol: str) -> None:
    """Rows (a column per entry) as the csv module writes them with minimal quoting, by
    Arrow's C++ writer when no text value needs quotes (the published files' case): the
    same bytes, without a Python object per value."""
    table = pa.table(columns)
    quoted = any(
        pc.any(pc.match_substring_regex(col, NEEDS_QUOTES)).as_py()
        for col in table.columns
        if pa.types.is_string(col.type)
    )
    if not quoted:
        options = pacsv.WriteOptions(include_header=False, quoting_style="none", eol=eol)
        pacsv.write_csv(table, fh, options)
    elif len(table):
        rows = zip(*(c.to_pylist() for c in table.columns), strict=True)
        fh.write(csv_text(rows, eol).encode())


def csv_text(rows, eol: str) -> str:
    """Rows as the csv module writes them (minimal quoting), ending each with `eol`."""
    text = io.StringIO(newline="")
    csv.writer(text, lineterminator=eol).writerows(rows)
    return text.getvalue()


def write_csv(df: pd.DataFrame, path: str | os.PathLike, columns: list[str]) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, columns=columns, index=False)


def _read_csv_checked(path: str | os.PathLike, columns: list[str], dtype=str) -> pd.DataFrame:
    path = data_path(path)
    if not path.exists():
        raise FileNotFoundError(f"CSV not found: {path}")
    df = pd.read_csv(storage.readable(path), dtype=dtype, keep_default_na=False)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing} (header is {list(df.columns)})")
    return df


def _read_arrow_csv(path: str | os.PathLike, columns: list[str], types: dict) -> pa.Table:
    """A CSV parsed by Arrow's C++ reader with these column types (no Python object per
    value); its `columns` must be there. Unparsable text raises pa.ArrowInvalid."""
    path = data_path(path)
    if not path.exists():
        raise FileNotFoundError(f"CSV not found: {path}")
    options = pacsv.ConvertOptions(column_types=types)
    table = pacsv.read_csv(storage.readable(path), convert_options=options)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing columns {missing} (header is {table.column_names})")
    return table


def read_image_list(
    path: str | os.PathLike, root: str | os.PathLike, checked: bool = True
) -> list[str]:
    """Legacy `*_img_list.csv` (header `img`): paths relative to the dataset root, each
    checked to stay inside it unless `checked` is false (a reader that opens no file by
    these paths: they only select rows of a table whose paths were checked)."""
    try:
        listed = _read_arrow_csv(path, IMAGE_LIST_COLUMNS, {"img": pa.string()})["img"]
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: not a readable image list ({exc})") from None
    # A line of spaces only is no image (the CSV reader skips only empty lines).
    paths = [p for p in pc.utf8_trim_whitespace(listed).to_pylist() if p]
    if checked:
        check_paths(root, paths, str(path))
    return paths


def write_image_list(paths: list[str], path: str | os.PathLike) -> None:
    write_csv(pd.DataFrame({"img": paths}), path, IMAGE_LIST_COLUMNS)


def read_pairs_csv(path: str | os.PathLike, root: str | os.PathLike) -> pd.DataFrame:
    """Legacy pairs CSV (`imgA,imgB`) into the pairs table (split left empty)."""
    df = _read_csv_checked(path, PAIRS_CSV_COLUMNS)
    check_paths(root, df["imgA"].tolist() + df["imgB"].tolist(), str(path))
    return pd.DataFrame(
        {
            "imgA": df["imgA"],
            "imgB": df["imgB"],
            "fidA": df["imgA"].map(file_id),
            "fidB": df["imgB"].map(file_id),
            "group": df["imgA"].map(identity_group),
            "split": "",
        }
    )


def write_pairs_csv(pairs: pd.DataFrame, path: str | os.PathLike) -> None:
    write_csv(pairs, path, PAIRS_CSV_COLUMNS)


def read_keypoints_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Legacy keypoints CSV -> DataFrame with file_id, img_h, img_w and (18,) x / y arrays."""
    return read_keypoints_table(path).to_pandas()


def read_keypoints_table(path: str | os.PathLike) -> pa.Table:
    """Legacy keypoints CSV -> Arrow table: file_id, img_h, img_w and fixed-size lists x, y
    of KEYPOINTS_SCHEMA's types, parsed by Arrow's C++ reader (no Python object per value:
    a million rows hold about 170 MB). Values must be integers; a bad row is named."""
    numbers = KEYPOINT_CSV_COLUMNS[1:]
    path = data_path(path)
    types = {"file_id": pa.string(), **dict.fromkeys(numbers, pa.int32())}
    try:
        raw = _read_arrow_csv(path, KEYPOINT_CSV_COLUMNS, types)
    except pa.ArrowInvalid as exc:
        _name_bad_value(path)
        raise DataError(f"{path}: not a readable keypoints CSV ({exc})") from None
    if any(raw[c].null_count for c in numbers):  # an empty field
        _name_bad_value(path)
    x, y = (
        np.column_stack([raw[f"p{k}_{axis}"].to_numpy() for k in range(N_KEYPOINTS)]).reshape(
            len(raw), N_KEYPOINTS
        )
        for axis in ("x", "y")
    )
    bad = (x < -1).any(axis=1) | (y < -1).any(axis=1)
    if bad.any():
        raise DataError(
            f"{path}: row {int(np.argmax(bad)) + 1}: keypoint coordinates must be >= 0 "
            "or -1 for missing"
        )
    return pa.table(
        {
            "file_id": raw["file_id"],
            "img_h": raw["img_h"],
            "img_w": raw["img_w"],
            "x": fixed_size_lists(x),
            "y": fixed_size_lists(y),
        }
    )


def fixed_size_lists(values: np.ndarray) -> pa.FixedSizeListArray:
    """An (N, K) array as N fixed-size lists of K values, without a Python object per row."""
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def list_values(column: pa.ChunkedArray | pa.Array, size: int = N_KEYPOINTS) -> np.ndarray:
    """Fixed-size lists (sliced or chunked) back to an (N, size) array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy().reshape(len(column), size)


def _name_bad_value(path: DataPath) -> None:
    """Raise a DataError naming the first value of the CSV that is not an integer."""
    df = _read_csv_checked(path, KEYPOINT_CSV_COLUMNS)
    for i, row in enumerate(df[KEYPOINT_CSV_COLUMNS[1:]].itertuples(index=False), start=1):
        for col, v in zip(KEYPOINT_CSV_COLUMNS[1:], row, strict=True):
            try:
                int(v)
            except ValueError:
                raise DataError(f"{path}: row {i}, column {col}: {v!r} is not an integer") from None


def write_keypoints_csv(
    keypoints: pd.DataFrame | pa.Table, path: str | os.PathLike, where: pa.Array | None = None
) -> None:
    """Legacy keypoints CSV of the rows `where` is true (all without it); rows with an error
    are omitted like the published script."""
    table = keypoints if isinstance(keypoints, pa.Table) else _keypoint_columns(keypoints)
    keep = pa.array(np.ones(len(table), bool)) if where is None else where
    if "error" in table.column_names:
        keep = pc.and_(keep, pc.is_null(table["error"]))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(csv_text([KEYPOINT_CSV_COLUMNS], "\r\n").encode())
        # A block of rows at a time, whole columns at once, never a copy of the table (as
        # Python lists a million rows took gigabytes).
        for start in range(0, len(table), CSV_BLOCK):
            block = table.slice(start, CSV_BLOCK).filter(keep.slice(start, CSV_BLOCK))
            if not len(block):
                continue
            xy = np.stack([list_values(block["x"]), list_values(block["y"])], axis=2)
            sizes = [block[c].to_numpy() for c in ("img_h", "img_w")]
            values = np.column_stack([*sizes, xy.reshape(len(block), -1)]).astype(np.int64)
            columns = {"file_id": block["file_id"]}
            columns |= {name: values[:, i] for i, name in enumerate(KEYPOINT_CSV_COLUMNS[1:])}
            append_rows(fh, columns, "\r\n")


def _keypoint_columns(df: pd.DataFrame) -> pa.Table:
    """The columns of a keypoints frame that its legacy CSV writes, as Arrow."""
    names = ["file_id", "img_h", "img_w", "x", "y"] + (["error"] * ("error" in df.columns))
    return to_arrow(df[names], pa.schema([KEYPOINTS_SCHEMA.field(n) for n in names]))
