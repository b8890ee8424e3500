"""Table schemas (DESIGN 3), atomic Parquet writes, legacy CSV read/write, file ids and
dataset-root path checks. Schemas and CSV columns are declared here once."""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import DataError, DiskFullError, UnreadableTableError
from pipeline.skeleton import N_KEYPOINTS

# --- schemas -------------------------------------------------------------------------

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


# Legacy CSV columns of the published scripts.
KEYPOINT_CSV_COLUMNS = ["file_id", "img_h", "img_w"] + [
    f"p{k}_{axis}" for k in range(N_KEYPOINTS) for axis in ("x", "y")
]
IMAGE_LIST_COLUMNS = ["img"]
PAIRS_CSV_COLUMNS = ["imgA", "imgB"]


# --- atomic writes -------------------------------------------------------------------


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
def disk_full_as_data_error(path: str | os.PathLike, needed: int | None = None) -> Iterator[None]:
    """Turn a failed write to `path` for want of space into a DiskFullError. For writes
    that clean up after themselves (a temporary directory); atomic_path does both."""
    try:
        yield
    except Exception as exc:
        full = disk_full_error(exc, path, needed)
        if full is None:
            raise
        raise full from exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only on success, so a
    reader never sees a partial file and a failed write leaves nothing behind. A write
    that runs out of space raises DiskFullError; `needed` (bytes, when the caller knows
    them) goes into its message."""
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


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path, needed=len(data)) as tmp:
        Path(tmp).write_bytes(data)


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
            values = [None if v is None else np.asarray(v).tolist() for v in values]
        try:
            arrays.append(pa.array(values, type=field.type, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise DataError(f"column {field.name!r} does not fit {field.type}: {exc}") from exc
    return pa.Table.from_arrays(arrays, schema=schema)


def write_table(df: pd.DataFrame | pa.Table, path: str | os.PathLike, schema: pa.Schema) -> None:
    """Atomically write a Parquet table with the declared schema."""
    table = df if isinstance(df, pa.Table) else to_arrow(df, schema)
    if not table.schema.equals(schema):
        table = table.select(schema.names).cast(schema)
    # The in-memory size: the file is usually smaller (compressed), never much larger.
    with atomic_path(path, needed=table.nbytes) as tmp:
        pq.write_table(table, tmp)


# What pyarrow raises for a file that is not (or no longer) a whole Parquet table.
UNREADABLE_PARQUET = (pa.ArrowInvalid, OSError)


def table_damage(path: str | os.PathLike) -> str | None:
    """Why the Parquet file at `path` cannot be read (its footer only is read), or None."""
    try:
        pq.read_metadata(path)
    except UNREADABLE_PARQUET as exc:
        return str(exc).splitlines()[0]
    return None


def read_table(path: str | os.PathLike, schema: pa.Schema | None = None) -> pd.DataFrame:
    """Read a Parquet table; with `schema`, check the columns it must have."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"table not found: {path}")
    try:
        table = pq.read_table(path)
    except UNREADABLE_PARQUET as exc:
        raise UnreadableTableError(
            f"{path} is not a readable Parquet table ({exc}); it was damaged or cut short. "
            "Rerun the stage that writes it with --force (the damaged file is moved aside)."
        ) from None
    if schema is not None:
        missing = [n for n in schema.names if n not in table.schema.names]
        # Columns added later (`schema` metadata "optional") read as nulls from older files.
        if [n for n in missing if n not in optional_columns(schema)]:
            raise DataError(f"{path}: missing columns {missing}")
        for name in missing:
            table = table.append_column(name, pa.nulls(len(table), schema.field(name).type))
        table = table.select(schema.names)
    return table.to_pandas()


def empty_frame(schema: pa.Schema) -> pd.DataFrame:
    return schema.empty_table().to_pandas()


def write_csv(df: pd.DataFrame, path: str | os.PathLike, columns: list[str]) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, columns=columns, index=False)


# --- file ids and paths --------------------------------------------------------------


def file_id(rel_path: str) -> str:
    """The published file id: relative path, extension dropped, separators removed
    (img/MEN/Denim/id_00000080/01_1_front.jpg -> imgMENDenimid_0000008001_1_front)."""
    stem = os.path.splitext(rel_path.replace("\\", "/"))[0]
    return stem.replace("/", "")


def checkpoint_sort_key(ckpt_id: str) -> tuple:
    """Order checkpoint ids (iterations) numerically, non-numeric ids after them by name."""
    return (0, int(ckpt_id), "") if ckpt_id.isdigit() else (1, 0, ckpt_id)


def identity_group(rel_path: str) -> str:
    """Identity folder of an image: img/MEN/Denim/id_00000080/x.jpg -> MEN/Denim/id_00000080."""
    parts = PurePosixPath(rel_path.replace("\\", "/")).parts
    if parts and parts[0] == "img":
        parts = parts[1:]
    return "/".join(parts[:-1])


def safe_path(root: str | os.PathLike, rel: str, where: str = "") -> Path:
    """Resolve `rel` under the dataset root, refusing absolute paths, `..` and symlinks
    that lead outside it. `where` names the offending row in the error."""
    at = f" ({where})" if where else ""
    if not isinstance(rel, str) or not rel.strip():
        raise DataError(f"empty path{at}")
    norm = rel.replace("\\", "/")
    if (
        norm.startswith("/")
        or PurePosixPath(norm).is_absolute()
        or (len(norm) > 1 and norm[1] == ":")
    ):
        raise DataError(
            f"absolute path {rel!r} refused{at}: paths must be relative to the dataset root"
        )
    if ".." in PurePosixPath(norm).parts:
        raise DataError(f"path {rel!r} escapes the dataset root{at}: '..' is not allowed")
    root_real = Path(root).resolve()
    full = (root_real / norm).resolve()
    if full != root_real and root_real not in full.parents:
        raise DataError(
            f"path {rel!r} resolves outside the dataset root {root_real}{at} (symlink?)"
        )
    return full


def relative_under(path: str | os.PathLike, root: str | os.PathLike) -> str | None:
    """`path` relative to `root` (POSIX separators) when it lies inside it, else None.
    Stored paths are kept relative to their root, so a copied tree keeps its records and
    never points back into the original."""
    full = os.path.abspath(path)
    base = os.path.abspath(root)
    if full == base:
        return "."
    if not full.startswith(base.rstrip(os.sep) + os.sep):
        return None
    return Path(os.path.relpath(full, base)).as_posix()


def check_paths(root: str | os.PathLike, paths: list[str], source: str) -> None:
    """Check every path of a table/CSV; one error lists all bad rows (1-based data rows)."""
    bad = []
    for i, rel in enumerate(paths, start=1):
        try:
            safe_path(root, rel)
        except DataError as exc:
            bad.append(f"row {i}: {exc}")
    if bad:
        shown = "\n  ".join(bad[:20]) + (
            f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        )
        raise DataError(
            f"{source}: {len(bad)} path(s) outside the dataset root refused:\n  {shown}"
        )


# --- legacy CSVs ---------------------------------------------------------------------


def _read_csv_checked(path: str | os.PathLike, columns: list[str]) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CSV not found: {path}")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
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
    df = _read_csv_checked(path, KEYPOINT_CSV_COLUMNS)
    try:
        values = df[KEYPOINT_CSV_COLUMNS[1:]].astype(np.int64).to_numpy()
    except ValueError:
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
    rows = []
    for r in ok.itertuples(index=False):
        xy = np.stack([np.asarray(r.x), np.asarray(r.y)], axis=1).reshape(-1)
        rows.append([r.file_id, int(r.img_h), int(r.img_w), *(int(v) for v in xy)])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(KEYPOINT_CSV_COLUMNS)
        writer.writerows(rows)
