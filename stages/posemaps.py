"""Pose-maps stage: one `<file_id>.npz` per image (legacy one-hot uint8 H x W x 18 under
`arr_0`, or gaussian), written atomically in parallel Ray tasks."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.posemap import out_of_image, render_map
from pipeline.runtime import StageResult
from pipeline.tables import KEYPOINTS_SCHEMA, SPLITS, DataError, DatasetLayout, read_table, write_bytes_atomic


def npz_bytes(pose_map: np.ndarray) -> bytes:
    """The npz numpy.savez_compressed writes (one member `arr_0.npy`, deflated), at zlib
    level 1: the same array for np.load(f)['arr_0'], 2.5x faster to write than the default
    level 6, about 4 KB instead of 1 KB per one-hot map."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("arr_0.npy", "w") as member:
            np.lib.format.write_array(member, np.asanyarray(pose_map), allow_pickle=False)
    return buf.getvalue()


def write_posemap(path: Path, x, y, height: int, width: int, sigma: float | None = None) -> None:
    write_bytes_atomic(path, npz_bytes(render_map(x, y, height, width, sigma)))


def load_posemap(path: Path) -> np.ndarray:
    with np.load(path) as data:
        return data["arr_0"]


POSEMAP_META = "pose_maps.json"   # beside the maps: which kind the stage wrote there


def posemap_kind(sigma: float | None) -> dict:
    return {"kind": "one-hot"} if sigma is None else {"kind": "gaussian", "sigma": sigma}


def recorded_posemap_kind(pose_dir: Path) -> dict | None:
    """The kind of the maps under `pose_dir`: the stage's record, else the dtype of one map
    (maps written before the record existed; a gaussian sigma is then unknown, None), else
    None when there are no maps."""
    meta = pose_dir / POSEMAP_META
    if meta.is_file():
        return json.loads(meta.read_text())
    first = next(pose_dir.glob("*.npz"), None) if pose_dir.is_dir() else None
    if first is None:
        return None
    if load_posemap(first).dtype == np.uint8:
        return posemap_kind(None)
    return {"kind": "gaussian", "sigma": None}


def describe_posemap_kind(kind: dict | None) -> str:
    if kind is None:
        return "none on disk (rendered one-hot from the keypoints table)"
    if kind["kind"] == "gaussian":
        return f"gaussian sigma {kind['sigma'] if kind.get('sigma') is not None else 'unknown'}"
    return kind["kind"]


def same_kind(recorded: dict, wanted: dict) -> bool:
    sigma = recorded.get("sigma")
    return recorded["kind"] == wanted["kind"] and sigma in (None, wanted.get("sigma"))


@dataclass
class PosemapJob:
    """One batch of maps to write: target files and the keypoints they hold."""

    paths: list[str]
    x: np.ndarray          # (n, 18) int32
    y: np.ndarray
    heights: np.ndarray    # (n,)
    widths: np.ndarray


def write_posemaps(job: PosemapJob, sigma: float | None) -> int:
    """Write a batch of maps; returns how many present keypoints fell outside their image
    (they are treated as missing)."""
    from pipeline.runtime import inject_fault

    inject_fault("posemaps")
    outside = 0
    for path, x, y, h, w in zip(job.paths, job.x, job.y, job.heights, job.widths, strict=True):
        write_posemap(Path(path), x, y, int(h), int(w), sigma)
        outside += out_of_image(x, y, int(h), int(w))
    return outside


def plan_posemaps(table: pd.DataFrame, layout: DatasetLayout, table_mtime: float, force: bool
                  ) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows whose map must be (re)written, with their target path, and the rows left out
    counted by reason. A map newer than the keypoints table is up to date."""
    excluded: dict[str, int] = {}
    has_error = table["error"].notna()
    excluded["keypoint error"] = int(has_error.sum())
    no_split = ~has_error & ~table["split"].isin(SPLITS)
    excluded["no train/test split"] = int(no_split.sum())
    rows = table[~has_error & ~no_split].copy()
    rows["target"] = [str(layout.posemap(s, f)) for s, f in zip(rows["split"], rows["file_id"], strict=True)]
    if not force:
        def fresh(p: str) -> bool:
            try:
                return Path(p).stat().st_mtime >= table_mtime
            except FileNotFoundError:
                return False

        up_to_date = rows["target"].map(fresh)
        excluded["up to date"] = int(up_to_date.sum())
        rows = rows[~up_to_date]
    return rows, {k: v for k, v in excluded.items() if v}


def jobs_for(rows: pd.DataFrame, batch_size: int) -> list[PosemapJob]:
    x, y = np.stack(rows["x"].to_numpy()), np.stack(rows["y"].to_numpy())
    h, w, targets = rows["img_h"].to_numpy(), rows["img_w"].to_numpy(), rows["target"].tolist()
    return [PosemapJob(targets[i:i + batch_size], x[i:i + batch_size], y[i:i + batch_size],
                       h[i:i + batch_size], w[i:i + batch_size]) for i in range(0, len(rows), batch_size)]


def run_posemaps(cfg: Config, sigma: float | None = None, force: bool = False, out: str | None = None,
                 progress: bool = True) -> StageResult:
    """Write the pose map of every keypoints row without an error, in parallel Ray tasks."""
    import ray
    from tqdm import tqdm

    from pipeline.runtime import init_ray

    result = StageResult("posemaps")
    source = DatasetLayout(cfg.dataset.root)
    layout = DatasetLayout(out or cfg.dataset.root)
    if not source.keypoints_table.is_file():
        raise DataError(f"no keypoints table at {source.keypoints_table}: run the keypoints stage first")
    table = read_table(source.keypoints_table, KEYPOINTS_SCHEMA)
    sigma = sigma if sigma is not None else cfg.posemaps.gaussian_sigma
    wanted = posemap_kind(sigma)
    # Up-to-date maps of another kind would leave a directory of mixed maps that generate
    # and train read as one kind: a change of kind rewrites them all.
    other = [(s, k) for s in SPLITS if (k := recorded_posemap_kind(layout.posemap_dir(s)))
             and not same_kind(k, wanted)]
    if other and not force:
        force = True
        result.notes += [f"{layout.posemap_dir(s)} held {k['kind']} maps: all rewritten"
                         for s, k in other]
    rows, excluded = plan_posemaps(table, layout, source.keypoints_table.stat().st_mtime, force)
    result.rows_in, result.skipped = len(table), excluded.get("up to date", 0)
    outside = 0
    if len(rows):
        init_ray(cfg.ray)
        task = ray.remote(write_posemaps)
        pending = [task.remote(job, sigma) for job in jobs_for(rows, cfg.posemaps.batch_size)]
        with tqdm(total=len(rows), desc="posemaps", unit="map", disable=not progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                outside += ray.get(done[0])
                bar.update(min(cfg.posemaps.batch_size, bar.total - bar.n))
    for split in SPLITS:
        meta = layout.posemap_dir(split) / POSEMAP_META
        # Rewritten only when it changes: downstream stages digest the maps folder by mtimes.
        record = json.dumps(wanted).encode()
        unchanged = meta.is_file() and meta.read_bytes() == record
        if layout.posemap_dir(split).is_dir() and not unchanged:
            write_bytes_atomic(meta, record)
    result.rows_out = len(rows)
    result.errors = excluded.get("keypoint error", 0)
    result.outputs = {f"{s}_pose_maps": str(layout.posemap_dir(s)) for s in SPLITS}
    result.notes.append(f"{'gaussian sigma ' + str(sigma) if sigma is not None else 'one-hot'} maps; "
                        f"{outside} out-of-image keypoint(s) treated as missing")
    result.notes += [f"not written ({reason}): {n}" for reason, n in excluded.items()]
    return result.finish()


@click.command("posemaps")
@click.option("--gaussian", "sigma", type=float, default=None, metavar="SIGMA",
              help="Gaussian maps with this sigma in pixels instead of the legacy one-hot maps.")
@click.option("--force", is_flag=True,
              help="Rewrite every map, even those newer than the keypoints table.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Write {train,test}_pose_maps/ here (default: dataset root).")
@click.pass_obj
def posemaps_command(obj, sigma, force, out) -> None:
    """Pose maps from the keypoints table (tables/keypoints.parquet of dataset.root).

    \b
    Writes {train,test}_pose_maps/<file_id>.npz: uint8 H x W x 18, 1 at [y, x, k] for each
    valid keypoint k, saved with numpy.savez_compressed under arr_0 like the published
    utility (np.load(f)['arr_0']). Files are written atomically by parallel Ray tasks;
    maps newer than the keypoints table are skipped unless --force or the kind (one-hot,
    gaussian sigma) changes. pose_maps.json beside the maps records the kind, so generate
    picks the matching transport by itself. Rows with errors are
    left out and counted; keypoints outside the image are treated as missing and counted.
    Example: run_pipeline.py --set dataset.root=data/synthetic posemaps
    """
    if sigma is not None and sigma <= 0:
        raise click.BadParameter("SIGMA must be > 0", param_hint="--gaussian")
    try:
        result = run_posemaps(obj.cfg, sigma=sigma, force=force, out=out)
    except DataError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(result.summary())
