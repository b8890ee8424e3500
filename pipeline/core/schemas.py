"""Table schemas (DESIGN 3), declared here once, and the conversions between them and
DataFrames: columns added later read as nulls from older files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.core.errors import DataError
from pipeline.pose.skeleton import N_KEYPOINTS

KEYPOINTS_SCHEMA = pa.schema(
    [
        ("path", pa.string()),  # relative to the dataset root: img/MEN/.../01_1_front.jpg
        ("file_id", pa.string()),
        ("split", pa.string()),  # train / test / "" when unknown
        ("img_h", pa.int32()),
        ("img_w", pa.int32()),
        ("x", pa.list_(pa.int32(), N_KEYPOINTS)),  # OpenPose-18 order, -1 = missing
        ("y", pa.list_(pa.int32(), N_KEYPOINTS)),
        ("score", pa.list_(pa.float32(), N_KEYPOINTS)),
        ("n_valid", pa.int32()),
        ("estimator", pa.string()),
        ("error", pa.string()),  # null when fine
        # Ray node id of the actor that estimated the row (null when imported, or in tables
        # written before it was recorded): shows how work spread over a cluster.
        ("node", pa.string()),
    ],
    metadata={"optional": "node"},
)

PAIRS_SCHEMA = pa.schema(
    [
        ("imgA", pa.string()),
        ("imgB", pa.string()),
        ("fidA", pa.string()),
        ("fidB", pa.string()),
        ("group", pa.string()),  # identity folder, e.g. MEN/Denim/id_00000080
        ("split", pa.string()),
    ]
)

MANIFEST_SCHEMA = pa.schema(
    [
        ("checkpoint", pa.string()),  # checkpoint id (iteration) or file stem
        ("direction", pa.string()),  # AB or BA
        ("index", pa.int64()),  # running index n of <n>@<fid>.jpg
        ("source_id", pa.string()),  # file id of the condition image
        ("target_id", pa.string()),  # file id of the image whose pose is generated
        ("real_path", pa.string()),  # relative to the generation root
        ("output_path", pa.string()),  # relative to the generation root
        ("status", pa.string()),  # ok / error
        ("error", pa.string()),
        # Digest of what made the image (checkpoint, both images, both maps, save mode): a
        # row is reused only while it matches. Null in manifests written before it existed.
        ("inputs", pa.string()),
        # Ray node id of the NetG actor that made the image (null for a hard link of
        # another job's file, and in manifests written before it was recorded).
        ("node", pa.string()),
    ],
    metadata={"optional": "inputs,node"},
)


def optional_columns(schema: pa.Schema) -> list[str]:
    """Columns added to `schema` later (its metadata "optional"): files and frames made
    before them are read with nulls there."""
    return [n for n in (schema.metadata or {}).get(b"optional", b"").decode().split(",") if n]


def _fixed_size_lists(values: pd.Series, field: pa.Field) -> pa.Array:
    """A column of equal-length arrays (keypoint coordinates, scores) as one stacked
    array, without a Python list per row (a million rows of three such columns took
    gigabytes); rows with nulls go the slow way."""
    size = field.type.list_size
    try:
        if values.isna().any():
            raise ValueError("nulls")
        flat = np.stack(values.to_numpy()).reshape(-1) if len(values) else np.zeros(0)
        if flat.size != len(values) * size:
            raise ValueError("lengths")
        items = pa.array(flat, type=field.type.value_type, from_pandas=True)
        return pa.FixedSizeListArray.from_arrays(items, size)
    except (ValueError, TypeError, pa.ArrowInvalid, pa.ArrowTypeError):
        rows = [None if v is None else np.asarray(v).tolist() for v in values]
    try:
        return pa.array(rows, type=field.type, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise DataError(f"column {field.name!r} does not fit {field.type}: {exc}") from exc


def to_arrow(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Convert a DataFrame to `schema`, naming the column that does not fit."""
    missing = [name for name in schema.names if name not in df.columns]
    if missing and set(missing) <= set(optional_columns(schema)):
        df = df.assign(**{name: None for name in missing})
        missing = []
    if missing:
        raise DataError(f"table is missing columns {missing}; expected {schema.names}")
    arrays = []
    for field in schema:
        values = df[field.name]
        if pa.types.is_fixed_size_list(field.type):
            arrays.append(_fixed_size_lists(values, field))
            continue
        try:
            arrays.append(pa.array(values, type=field.type, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise DataError(f"column {field.name!r} does not fit {field.type}: {exc}") from exc
    return pa.Table.from_arrays(arrays, schema=schema)
