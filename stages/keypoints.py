"""Keypoints stage: OpenPose-18 keypoints per image, estimated with openpifpaf or mediapipe
(BlazePose) on Ray or imported from a legacy keypoints CSV; the keypoints table plus legacy
CSVs, and optionally a QA table against a reference CSV."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.cluster.stage_result import StageResult
from pipeline.core import storage
from pipeline.core.atomic_io import read_table, write_table
from pipeline.core.config import Config, KeypointsConfig, dataset_path
from pipeline.core.errors import DataError
from pipeline.core.layout import SPLITS, DatasetLayout, OutputLayout
from pipeline.core.legacy_csv import (
    fixed_size_lists,
    list_values,
    read_image_list,
    read_keypoints_csv,
    read_keypoints_table,
    write_keypoints_csv,
)
from pipeline.core.object_path import DataPath, data_path
from pipeline.core.paths import check_paths, file_id, file_ids, identity_groups
from pipeline.core.resumable import ResumableTable
from pipeline.core.schemas import KEYPOINTS_SCHEMA, to_arrow
from pipeline.pose.skeleton import MISSING, N_KEYPOINTS, valid_mask
from stages.spec import CACHED_STORAGE_KEYS, DATASET_ROOT, OUTPUT_ROOT, STREAMED_KEYS, StageSpec

IMPORTED = "imported"
DEFAULT_GLOB = "img/**/*.jpg"
# An interrupted run keeps what it finished: results are flushed to part files this often.
FLUSH_ROWS = 256
FLUSH_SECONDS = 60.0


def keypoints_from_csv(csv_path, images: pd.DataFrame, estimator: str = IMPORTED) -> pd.DataFrame:
    """keypoints_table_from_csv as a DataFrame (x, y and score as arrays per row)."""
    return keypoints_table_from_csv(csv_path, images, estimator).to_pandas()


def keypoints_table_from_csv(csv_path, images: pd.DataFrame, estimator: str = IMPORTED) -> pa.Table:
    """Import a legacy keypoints CSV for `images` (columns path, split) as the keypoints
    table, sorted by path. Every image must have a row; rows for images not listed are
    ignored, and of a file_id listed twice the last row counts. Arrow throughout: no
    Python object per keypoint row (a million rows as arrays per row took gigabytes)."""
    legacy = read_keypoints_table(csv_path)
    images = sorted_by_path(images)
    fids = file_ids(pa.array(images["path"], pa.string()))
    # A file id's last row is its first in the reversed table (index_in finds the first).
    backwards = np.arange(len(legacy) - 1, -1, -1)
    at = pc.index_in(fids, value_set=legacy["file_id"].take(backwards))
    if at.null_count:
        missing = images["path"][pc.is_null(at).to_numpy(zero_copy_only=False)]
        raise DataError(
            f"{csv_path}: no keypoints for {len(missing)} listed image(s), e.g. {missing.iloc[0]}"
        )
    rows = legacy.take(backwards[at.to_numpy()])
    del legacy
    valid = valid_mask(list_values(rows["x"]), list_values(rows["y"]))
    n = len(images)
    columns = {
        "path": pa.array(images["path"], pa.string()),
        "file_id": fids,
        "split": pa.array(images["split"], pa.string()),
        "img_h": rows["img_h"],
        "img_w": rows["img_w"],
        "x": rows["x"],
        "y": rows["y"],
        "score": fixed_size_lists(valid.astype(np.float32)),
        "n_valid": pa.array(valid.sum(axis=1, dtype=np.int32)),
        "estimator": pa.repeat(estimator, n),
        "error": pa.nulls(n, pa.string()),
        "node": pa.nulls(n, pa.string()),
    }
    return pa.Table.from_pydict(columns, schema=KEYPOINTS_SCHEMA)


def list_images(cfg: Config, pattern: str | None = None) -> pd.DataFrame:
    """The images to annotate (path, split): the legacy image lists of the config, or with
    `pattern` (or without lists) a glob under the dataset root (split left empty)."""
    root = data_path(cfg.dataset.root)
    lists = {s: DatasetLayout.of(cfg.dataset).image_list(s) for s in SPLITS}
    if pattern is None and any(p.is_file() for p in lists.values()):
        found = [
            pd.DataFrame({"path": read_image_list(f, root), "split": s})
            for s, f in lists.items()
            if f.is_file()
        ]
        images = pd.concat(found, ignore_index=True) if len(found) > 1 else found[0]
    else:
        found = sorted(
            p.relative_to(root).as_posix()
            for p in root.glob(pattern or DEFAULT_GLOB)
            if p.is_file()
        )
        check_paths(root, found, f"glob {pattern or DEFAULT_GLOB}")
        images = pd.DataFrame({"path": found, "split": ""}, columns=["path", "split"])
    if not len(images):
        raise DataError(
            f"no images under {root}: no image lists ({', '.join(map(str, lists.values()))}) "
            f"and nothing matches {pattern or DEFAULT_GLOB}"
        )
    return sorted_by_path(images.drop_duplicates("path"))


def sorted_by_path(images: pd.DataFrame) -> pd.DataFrame:
    """`images` in path order (image lists usually are: then without a copy)."""
    if images["path"].is_monotonic_increasing:
        return images.reset_index(drop=True)
    return images.sort_values("path", ignore_index=True)


def decode_images(batch: dict[str, np.ndarray], root: str) -> dict[str, np.ndarray]:
    """Ray task: read and decode each image as RGB; unreadable ones get an error reason."""
    from pipeline.core.imaging import ImageError, read_rgb

    images, errors = [], []
    for rel in batch["path"]:
        try:
            images.append(np.asarray(read_rgb(root, rel)))
            errors.append(None)
        except (ImageError, DataError) as exc:
            images.append(np.zeros((0, 0, 3), np.uint8))
            errors.append(str(exc))
    return {"path": batch["path"], "split": batch["split"], "image": images, "decode_error": errors}


def keypoint_rows(
    paths, splits, images, errors, predicted: dict[int, tuple], estimator: str,
    node: str | None = None,
) -> pd.DataFrame:  # fmt: skip
    """Table rows for one batch: predictions where decoding worked, error rows elsewhere."""
    none = np.full(N_KEYPOINTS, MISSING, np.int32)
    rows = []
    for i, (path, split, image, error) in enumerate(
        zip(paths, splits, images, errors, strict=True)
    ):
        x, y, score = predicted.get(i, (none, none, np.zeros(N_KEYPOINTS, np.float32)))
        error = None if pd.isna(error) else str(error)
        h, w = (image.shape[0], image.shape[1]) if error is None else (0, 0)
        rows.append(
            (
                path,
                file_id(path),
                split,
                h,
                w,
                x,
                y,
                score,
                int(valid_mask(x, y).sum()),
                estimator,
                error,
                node,
            )
        )
    return pd.DataFrame(rows, columns=KEYPOINTS_SCHEMA.names)


class KeypointsPredictor:
    """Ray Data actor: one estimator per actor, decoded images in, table rows out."""

    def __init__(self, keypoints: KeypointsConfig, device: str | None, actors_per_node: int):
        from pipeline.cluster.ray_pool import use_node_threads
        from pipeline.cluster.runtime import current_node
        from pipeline.pose.estimator_factory import build_estimator

        if keypoints.estimator != "mediapipe":  # mediapipe has its own threads, no torch
            use_node_threads(actors_per_node)
        self.estimator = build_estimator(keypoints, device=device)
        self.node = current_node()

    def __call__(self, batch: dict[str, np.ndarray]) -> pd.DataFrame:
        from pipeline.cluster.runtime import inject_fault

        inject_fault("keypoints")
        ok = [i for i, e in enumerate(batch["decode_error"]) if pd.isna(e)]
        predicted = dict(
            zip(ok, self.estimator.predict([batch["image"][i] for i in ok]), strict=True)
        )
        return keypoint_rows(
            batch["path"],
            batch["split"],
            batch["image"],
            batch["decode_error"],
            predicted,
            self.estimator.name,
            self.node,
        )


def estimate_keypoints(
    cfg: Config,
    todo: pd.DataFrame,
    output: ResumableTable,
    estimator: KeypointsConfig,
    progress: bool = True,
) -> int:
    """Run the estimator (resolved by estimators.resolve_estimator) over `todo` on Ray Data:
    decode tasks feed a model pool; finished rows reach `output`'s part files as they come."""
    from pipeline.cluster.batch_stream import Actors, Tasks, run_batches
    from pipeline.cluster.ray_pool import IO_CPUS, plan_pool
    from pipeline.cluster.runtime import largest_node_cpus

    kc = cfg.keypoints
    # A share below half a node leaves room for the decode tasks under Ray Data's
    # per-operator budget; torch still gets the node's cores as threads.
    share = min(1.0, (largest_node_cpus() - IO_CPUS) / 2)
    # mediapipe runs on CPU only: GPUs would sit idle in its actors.
    pool = plan_pool(kc.concurrency, use_gpus=estimator.estimator != "mediapipe", num_cpus=share)
    steps = [
        Tasks(decode_images, {"root": storage.absolute(cfg.dataset.root)}, kc.batch_size),
        Actors(KeypointsPredictor, pool, {"keypoints": estimator, "device": None}, kc.batch_size),
    ]
    return run_batches(todo[["path", "split"]], kc.batch_size, steps, label="keypoints",
                       unit="img", outputs=[output], progress=progress,
                       stall_timeout=cfg.ray.stall_timeout_s)  # fmt: skip


def write_outputs(table: pa.Table, layout: DatasetLayout, notes: list[str]) -> dict[str, str]:
    """The keypoints table (partitioned by identity, sorted by path) and the legacy CSV of
    each split; says in `notes` how many of the table's parts were rewritten."""
    output = keypoints_output(layout)
    output.commit(table)
    w = output.last_write
    notes.append(
        f"keypoints table: {w.written} of {w.written + w.kept} part(s) (of whole identities) "
        f"rewritten, {w.kept} unchanged"
    )
    outputs = {"keypoints_table": str(layout.keypoints_table)}
    for split in SPLITS:
        rows = pc.equal(table["split"], split)
        if pc.any(rows).as_py():
            write_keypoints_csv(table, layout.keypoints_csv(split), where=rows)
            outputs[f"{split}_csv"] = str(layout.keypoints_csv(split))
    return outputs


def keypoints_output(layout: DatasetLayout) -> ResumableTable:
    """The keypoints table, one row per image path, resumable (tables/keypoints.parts);
    partitioned by identity folder, so that an update rewrites the parts of the identities
    it touched only."""
    return ResumableTable(
        layout.keypoints_table, KEYPOINTS_SCHEMA, ["path"], FLUSH_ROWS, FLUSH_SECONDS,
        partition_keys=lambda t: identity_groups(t["path"].combine_chunks()), sort_by="path",
    )  # fmt: skip


SOURCES_SCHEMA = pa.schema([("path", pa.string()), ("digest", pa.string())])


def image_digests(cfg: Config, root: DataPath, paths: pd.Series) -> dict[str, str]:
    """Content digest of each image ("missing" when unreadable), through the output root's
    stat-keyed cache: unchanged files are not read again. On object storage from one
    listing of the images' folder: no object is read."""
    from pipeline.core.content_state import ContentCache

    out = {}
    with ContentCache(OutputLayout(cfg.output.root).content_cache) as cache:
        if not isinstance(root, Path):
            folder = os.path.commonpath([os.path.dirname(p) for p in paths] or [""])
            listed = cache.tree(root / folder if folder else root)
            return {p: listed.get(os.path.relpath(p, folder or "."), "missing") for p in paths}
        for rel in paths:
            try:
                out[rel] = cache.digest(root / rel)
            except OSError:
                out[rel] = "missing"
    return out


def read_sources(layout: DatasetLayout) -> dict[str, str]:
    """The image digest each keypoints row was made from (rows of an interrupted run have
    none yet and are kept)."""
    if not layout.keypoints_sources.is_file():
        return {}
    table = read_table(layout.keypoints_sources, SOURCES_SCHEMA)
    return dict(zip(table["path"], table["digest"], strict=True))


def estimate_pending(
    cfg: Config,
    kc,
    layout: DatasetLayout,
    images: pd.DataFrame,
    force: bool,
    progress: bool,
    result: StageResult,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Keypoints of every image: kept rows whose image and model are unchanged, estimated
    ones for the rest; with the images' content digests, recorded as the table's sources."""
    from pipeline.cluster.runtime import init_ray
    from pipeline.pose.estimator_factory import estimator_name

    output = keypoints_output(layout)
    if force:
        output.discard()
    finished = pd.DataFrame(columns=KEYPOINTS_SCHEMA.names) if force else output.done()
    # Rows with an error are retried: the file may have been fixed since. Rows another
    # model made (another checkpoint, estimator or version; imported ones) are redone.
    finished = finished[
        finished["path"].isin(set(images["path"]))
        & finished["error"].isna()
        & (finished["estimator"] == estimator_name(kc))
    ]
    # The images are the dataset's, wherever --out puts the tables.
    digests = image_digests(cfg, data_path(cfg.dataset.root), images["path"])
    recorded = read_sources(layout)
    changed = {p for p in finished["path"] if p in recorded and recorded[p] != digests[p]}
    finished = finished[~finished["path"].isin(changed)]
    todo = images[~images["path"].isin(set(finished["path"]))]
    result.skipped = len(images) - len(todo)
    if changed:
        result.notes.append(f"{len(changed)} image(s) changed since their keypoints were made")
    if len(todo):
        from pipeline.pose.estimator_factory import resolve_estimator

        # Missing weights fail here, before Ray starts.
        resolved = resolve_estimator(kc, cfg.weights.dir)
        init_ray(cfg.ray)
        estimate_keypoints(cfg, todo, output, resolved, progress)
    new = output.done(with_table=not force)
    new = new[new["path"].isin(set(todo["path"]))]
    table = pd.concat([finished, new], ignore_index=True)
    table = table[table["path"].isin(set(images["path"]))].drop_duplicates("path", keep="last")
    table = table.sort_values("path", ignore_index=True)
    return table, digests


def run_keypoints(
    cfg: Config,
    checkpoint: str | None = None,
    annotations: str | None = None,
    force: bool = False,
    out: str | None = None,
    pattern: str | None = None,
    progress: bool = True,
    estimator: str | None = None,
    compare: str | None = None,
) -> StageResult:
    """Estimate (or import) keypoints for the dataset's images; resume unless `force`.
    `compare`: score them against this reference legacy CSV (tables/keypoints_qa.parquet)."""

    kc = cfg.keypoints.model_copy(
        update={
            "estimator": estimator or cfg.keypoints.estimator,
            "checkpoint": checkpoint or cfg.keypoints.checkpoint,
        }
    )
    result = StageResult("keypoints")
    layout = DatasetLayout(out or cfg.dataset.root)
    images = list_images(cfg, pattern)
    result.rows_in = len(images)
    annotations = annotations or _dataset_file(cfg, cfg.keypoints.annotations)
    if annotations:
        table = keypoints_table_from_csv(
            annotations, images, estimator=f"{IMPORTED}:{Path(annotations).name}"
        )
        result.notes.append(f"imported {len(table)} rows from {annotations}")
    else:
        estimated, digests = estimate_pending(cfg, kc, layout, images, force, progress, result)
        table = to_arrow(estimated, KEYPOINTS_SCHEMA)
        del estimated
    result.rows_out = len(table)
    found = pc.is_null(table["error"])
    result.errors = len(table) - pc.sum(found).as_py() if len(table) else 0
    result.outputs = write_outputs(table, layout, result.notes)
    if not annotations:
        paths = table["path"].to_pandas()
        write_table(
            pd.DataFrame({"path": paths, "digest": paths.map(digests)}),
            layout.keypoints_sources,
            SOURCES_SCHEMA,
        )
    no_person = pc.sum(pc.and_(found, pc.equal(table["n_valid"], 0))).as_py() or 0
    result.notes.append(f"{no_person} image(s) without a person; {result.errors} error row(s)")
    errors = table.filter(pc.invert(found))["error"].to_pandas()
    for reason, n in errors.str.split(":").str[0].value_counts().items():
        result.notes.append(f"  error {reason}: {n}")
    compare = compare or _dataset_file(cfg, kc.compare)
    if compare:
        result.outputs["keypoints_qa"], lines = write_keypoint_qa(table, compare, layout)
        result.notes += lines
    return result.finish()


def write_keypoint_qa(
    table: pa.Table | pd.DataFrame, reference_csv: str, layout: DatasetLayout
) -> tuple[str, list[str]]:
    """Score the keypoints table against a reference legacy CSV into tables/keypoints_qa.parquet;
    returns its path and the summary lines."""
    from pipeline.pose.keypoint_qa import KEYPOINT_QA_SCHEMA, compare_keypoints, qa_summary

    if isinstance(table, pa.Table):
        table = table.to_pandas()
    qa = compare_keypoints(table, read_keypoints_csv(reference_csv))
    path = layout.keypoints_qa
    write_table(qa, path, KEYPOINT_QA_SCHEMA)
    return str(path), qa_summary(qa, Path(reference_csv).name)


def _dataset_file(cfg: Config, path: str | None) -> str | None:
    return str(dataset_path(cfg, path)) if path else None


def _layout(cfg: Config) -> DatasetLayout:
    return DatasetLayout.of(cfg.dataset)


STAGE = StageSpec(
    name="keypoints",
    version=1,
    run=lambda cfg, fresh: run_keypoints(cfg, force=fresh, progress=True),
    does=lambda cfg: (
        (
            f"import keypoints from {cfg.keypoints.annotations}"
            if cfg.keypoints.annotations
            else f"estimate keypoints with {cfg.keypoints.estimator} on the images of the "
            "train and test lists (new or changed images only)"
        )
        + (f", then score them against {cfg.keypoints.compare}" if cfg.keypoints.compare else "")
    ),
    config_keys=(
        "dataset.train_list",
        "dataset.test_list",
        "keypoints.checkpoint",
        "keypoints.annotations",
        "keypoints.min_score",
        "keypoints.estimator",
        "keypoints.min_visibility",
        "keypoints.compare",
    ),
    ignored_keys={
        **CACHED_STORAGE_KEYS,
        **STREAMED_KEYS,
        **DATASET_ROOT,
        **OUTPUT_ROOT,
        "keypoints.batch_size": "images per estimator call: batching only",
        "keypoints.concurrency": "estimator actors: scheduling only",
        "weights.dir": "where the checkpoint keypoints.checkpoint names is looked up; each row "
        "records the file it came from, and rows of another one are redone",
    },
    inputs=lambda cfg: [
        _layout(cfg).image_list("train"),
        _layout(cfg).image_list("test"),
        _layout(cfg).images,
        *(dataset_path(cfg, p) for p in (cfg.keypoints.annotations, cfg.keypoints.compare) if p),
    ],
    outputs=lambda cfg: [_layout(cfg).keypoints_table],
    previous=lambda cfg: [
        _layout(cfg).keypoints_table,
        _layout(cfg).keypoints_parts,
        _layout(cfg).keypoints_qa,
        _layout(cfg).keypoints_sources,
        *(_layout(cfg).keypoints_csv(s) for s in SPLITS),
    ],
)
