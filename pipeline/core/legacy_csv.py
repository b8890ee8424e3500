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
from pipeline.core.object_path import data_path
from pipeline.core.paths import check_paths, file_id, identity_group
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


def read_image_list(path: str | os.PathLike, root: str | os.PathLike) -> list[str]:
    """Legacy `*_img_list.csv` (header `img`): paths relative to the dataset root."""
    df = _read_csv_checked(path, IMAGE_LIST_COLUMNS)
    paths = [p.strip() for p in df["img"].tolist()]
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
    """Legacy keypoints CSV -> DataFrame with file_id, img_h, img_w and (18,) x / y arrays.
    Values must be integers; a bad row is named in the error."""
    numbers = KEYPOINT_CSV_COLUMNS[1:]
    try:
        # Integers straight from the CSV reader: read as text first, every value is a
        # Python string (about 50 bytes; 2 GB for a million rows of 39 values).
        df = _read_csv_checked(
            path, KEYPOINT_CSV_COLUMNS, {"file_id": str, **dict.fromkeys(numbers, np.int64)}
        )
        values = df[numbers].to_numpy()
    except ValueError:
        df = _read_csv_checked(path, KEYPOINT_CSV_COLUMNS)
        for i, row in enumerate(df[KEYPOINT_CSV_COLUMNS[1:]].itertuples(index=False), start=1):
            for col, v in zip(KEYPOINT_CSV_COLUMNS[1:], row, strict=True):
                try:
                    int(v)
                except ValueError:
                    raise DataError(
                        f"{path}: row {i}, column {col}: {v!r} is not an integer"
                    ) from None
        raise
    xy = values[:, 2:].reshape(-1, N_KEYPOINTS, 2)
    if (xy < -1).any():
        i = int(np.argwhere((xy < -1).any(axis=(1, 2)))[0, 0]) + 1
        raise DataError(f"{path}: row {i}: keypoint coordinates must be >= 0 or -1 for missing")
    return pd.DataFrame(
        {
            "file_id": df["file_id"].tolist(),
            "img_h": values[:, 0].astype(np.int32),
            "img_w": values[:, 1].astype(np.int32),
            "x": list(xy[:, :, 0].astype(np.int32)),
            "y": list(xy[:, :, 1].astype(np.int32)),
        }
    )


def write_keypoints_csv(keypoints: pd.DataFrame, path: str | os.PathLike) -> None:
    """Legacy keypoints CSV; rows with an error are omitted like the published script."""
    ok = keypoints
    if "error" in keypoints.columns:
        ok = keypoints[keypoints["error"].isna()]
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(csv_text([KEYPOINT_CSV_COLUMNS], "\r\n").encode())
        # Whole columns at once, a block of rows at a time (as Python lists a million rows
        # took gigabytes).
        for start in range(0, len(ok), CSV_BLOCK):
            block = ok.iloc[start : start + CSV_BLOCK]
            x, y = np.stack(block["x"].to_numpy()), np.stack(block["y"].to_numpy())
            xy = np.stack([x, y], axis=2).reshape(len(block), -1)
            values = np.column_stack([block["img_h"], block["img_w"], xy]).astype(np.int64)
            columns = {"file_id": block["file_id"].to_numpy(dtype=object)}
            columns |= {name: values[:, i] for i, name in enumerate(KEYPOINT_CSV_COLUMNS[1:])}
            append_rows(fh, columns, "\r\n")
