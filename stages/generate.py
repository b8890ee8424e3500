"""Generate stage: every generator checkpoint over every test pair in both directions
(A->B with map pair (A, B), B->A with (B, A)), NetG in a Ray Data actor pool, written in
the published test-output layout with a generation manifest; reruns resume. Jobs with the
same checkpoint and inputs (B->A of (b, a) is A->B of (a, b)) run once."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import zipfile
from pathlib import Path

import click
import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.content_state import ContentCache
from pipeline.layout import DatasetLayout, GenerationLayout, OutputLayout
from pipeline.resumable import ResumableTable
from pipeline.runtime import StageResult
from pipeline.save_modes import SAVE_MODES, record_generation, save_mode
from pipeline.tables import MANIFEST_SCHEMA, DataError, read_pairs_csv, read_table, safe_path
from stages.spec import StageSpec

DIRECTIONS = tuple(GenerationLayout.DIRECTIONS)
MANIFEST = GenerationLayout.MANIFEST
MANIFEST_FLUSH_S = 20  # seconds between manifest saves during a run
TEST_SPLIT = "test"
# Columns of a generation job (one output image of one checkpoint) besides the maps' sources.
JOB_COLUMNS = [
    "checkpoint",
    "checkpoint_path",
    "direction",
    "index",
    "source_path",
    "source_id",
    "target_path",
    "target_id",
    "real_path",
    "inputs",
]
IDENTITY_KEY = ["checkpoint", "source_id", "target_id"]  # same network, same inputs: same image
SOURCE_KEY = ["checkpoint", "direction", "index"]  # one job, one manifest row


# --- the pure core ---------------------------------------------------------------------


def read_test_pairs(
    root: str | os.PathLike, pairs_file: str | os.PathLike | None = None
) -> pd.DataFrame:
    """The test pairs in table order: `pairs_file` (Parquet pairs table or legacy CSV), else
    the dataset's pairs table (split test), else its legacy `test_img_pairs.csv`."""
    layout = DatasetLayout(root)
    if pairs_file is not None:
        path = Path(pairs_file)
    elif layout.pairs_table.exists():
        path = layout.pairs_table
    elif layout.pairs_csv(TEST_SPLIT).exists():
        path = layout.pairs_csv(TEST_SPLIT)
    else:
        raise DataError(
            f"no pairs under {root}: neither {layout.pairs_table} nor "
            f"{layout.pairs_csv(TEST_SPLIT)} exists; run the pairs stage first"
        )
    if path.suffix.lower() == ".csv":
        pairs = read_pairs_csv(path, root)
    else:
        pairs = read_table(path)
        if "split" in pairs and (pairs["split"] != "").any():
            pairs = pairs[pairs["split"] == TEST_SPLIT]
    if pairs.empty:
        raise DataError(f"{path}: no test pairs to generate")
    return pairs.reset_index(drop=True)


def generation_jobs(pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per (direction, n): n is the pair's 0-based position in the table, as the
    published test script counts it; B->A swaps the roles of A and B."""
    n = np.arange(len(pairs))
    frames = []
    for direction in DIRECTIONS:
        src, dst = ("A", "B") if direction == "AB" else ("B", "A")
        frames.append(
            pd.DataFrame(
                {
                    "direction": direction,
                    "index": n,
                    "source_path": pairs[f"img{src}"].to_numpy(),
                    "source_id": pairs[f"fid{src}"].to_numpy(),
                    "target_path": pairs[f"img{dst}"].to_numpy(),
                    "target_id": pairs[f"fid{dst}"].to_numpy(),
                }
            )
        )
    jobs = pd.concat(frames, ignore_index=True)
    jobs["real_path"] = [
        GenerationLayout.real(d, i, t)
        for d, i, t in zip(jobs["direction"], jobs["index"], jobs["target_id"], strict=True)
    ]
    return jobs


def attach_map_sources(jobs: pd.DataFrame, root: str | os.PathLike) -> pd.DataFrame:
    """Where each job's two pose maps come from: the legacy npz when it exists, else the
    keypoints table's row (rendered on the fly), else nothing (the job becomes an error)."""
    layout = DatasetLayout(root)
    fids = pd.unique(pd.concat([jobs["source_id"], jobs["target_id"]]))
    npz = {f: str(layout.posemap(TEST_SPLIT, f)) for f in fids}
    lacking = [f for f in fids if not os.path.exists(npz[f])]
    keypoints: dict[str, np.ndarray] = {}
    if lacking and layout.keypoints_table.exists():
        table = read_table(layout.keypoints_table)
        table = table[table["file_id"].isin(set(lacking)) & table["error"].isna()]
        for r in table.itertuples(index=False):
            # height, width, 18 x, 18 y: what posemap.render_map needs, in one flat array.
            keypoints[r.file_id] = np.concatenate([[r.img_h, r.img_w], r.x, r.y]).astype(np.int32)
    out = jobs.copy()
    for role in ("source", "target"):
        out[f"{role}_map"] = out[f"{role}_id"].map(npz)
        out[f"{role}_keypoints"] = [keypoints.get(f) for f in out[f"{role}_id"]]
    return out


MANIFEST_KEY = ["checkpoint", "direction", "index"]


def manifest_output(out_dir: str | os.PathLike) -> ResumableTable:
    """The generation manifest, one row per output file, resumable (manifest.parts)."""
    return ResumableTable(
        Path(out_dir) / MANIFEST,
        MANIFEST_SCHEMA,
        MANIFEST_KEY,
        flush_rows=1 << 30,
        flush_seconds=MANIFEST_FLUSH_S,
    )


def read_manifest(out_dir: str | os.PathLike) -> pd.DataFrame:
    return manifest_output(out_dir).done()


def done_rows(manifest: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    """Ok manifest rows whose generated and real image files both exist."""
    done = manifest[manifest["status"] == "ok"]
    present = [
        (out_dir / f).is_file() and (out_dir / r).is_file()
        for f, r in zip(done["output_path"], done["real_path"], strict=True)
    ]
    return done[np.array(present, dtype=bool)]


def same_inputs(done: pd.DataFrame, jobs: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """Done rows made from what the matching job would use now (rows written before inputs
    were recorded count as made from it: an upgrade does not redo work)."""
    now = jobs[key + ["inputs"]].drop_duplicates(key).rename(columns={"inputs": "inputs_now"})
    rows = done.merge(now, on=key)
    keep = rows["inputs"].isna() | (rows["inputs"] == rows["inputs_now"])
    return rows[keep.to_numpy()].drop(columns="inputs_now")


def input_digests(jobs: pd.DataFrame, root: str, cache) -> list[str]:
    """Per job, a digest of its two images and two pose maps (the npz file, else the
    keypoints row it is rendered from), by content through the stat-keyed `cache`."""

    def image(rel: str) -> str:
        try:
            return cache.digest(safe_path(root, rel))
        except (OSError, DataError):
            return "missing"

    def pose(npz: str, keypoints) -> str:
        if os.path.exists(npz):
            return cache.digest(npz)
        return "none" if keypoints is None else hashlib.blake2b(keypoints.tobytes()).hexdigest()

    images = {p: image(p) for p in pd.unique(pd.concat([jobs["source_path"], jobs["target_path"]]))}
    maps = {}
    for role in ("source", "target"):
        for fid, npz, kp in zip(jobs[f"{role}_id"], jobs[f"{role}_map"], jobs[f"{role}_keypoints"],
                                strict=True):  # fmt: skip
            if fid not in maps:
                maps[fid] = pose(npz, kp)
    return [
        "|".join((images[s], images[t], maps[sf], maps[tf]))
        for s, t, sf, tf in zip(
            jobs["source_path"],
            jobs["target_path"],
            jobs["source_id"],
            jobs["target_id"],
            strict=True,
        )  # fmt: skip
    ]


def with_checkpoint(jobs: pd.DataFrame, base: list[str], ckpt: str, ckpt_digest: str,
                    mode: str) -> pd.DataFrame:  # fmt: skip
    """The jobs of one checkpoint, each with the digest of everything that makes its image."""
    digests = [hashlib.blake2b(f"{b}|{ckpt_digest}|{mode}".encode(), digest_size=12).hexdigest()
               for b in base]  # fmt: skip
    return jobs.assign(checkpoint=ckpt, inputs=digests)


def stale_rows(manifest: pd.DataFrame, jobs: pd.DataFrame, ckpts: list[str]) -> pd.DataFrame:
    """Rows of `ckpts` that no current job matches (a pair left the table, an index moved)
    or whose inputs changed since: their files no longer describe the pair set."""
    key = ["checkpoint", "direction", "index", "source_id", "target_id"]
    mine = manifest[manifest["checkpoint"].isin(ckpts)]
    current = same_inputs(mine, jobs, key)[key]
    flags = mine[key].merge(current.assign(_current=True), on=key, how="left")["_current"]
    return mine[flags.isna().to_numpy()]


def pending_jobs(
    jobs: pd.DataFrame, manifest: pd.DataFrame, ckpt: str, out_dir: Path
) -> pd.DataFrame:
    """Jobs of `ckpt` not yet done: no ok manifest row for the same pair and inputs, or its
    generated or real image file is gone."""
    done = done_rows(manifest[manifest["checkpoint"] == ckpt], out_dir)
    key = ["direction", "index", "source_id", "target_id"]
    if "inputs" in jobs:
        done = same_inputs(done, jobs, key)
    merged = jobs.merge(done[key].drop_duplicates(), on=key, how="left", indicator=True)
    return jobs[(merged["_merge"] == "left_only").to_numpy()].reset_index(drop=True)


def identical_jobs(todo: pd.DataFrame, done: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split pending jobs into those to run and `links`, whose image another job makes: a
    symmetric pair set holds (a, b) and (b, a), and B->A of one is A->B of the other. A
    key (IDENTITY_KEY) runs once, as its first pending job, unless `done` (ok manifest rows
    whose files exist) already has it. Links carry their source job's manifest key and
    files as `from_direction`, `from_index`, `from_output`, `from_real`."""
    source_columns = {
        "direction": "from_direction",
        "index": "from_index",
        "output_path": "from_output",
        "real_path": "from_real",
    }
    made = done.drop_duplicates(IDENTITY_KEY).rename(columns=source_columns)
    made = todo.merge(made[IDENTITY_KEY + list(source_columns.values())], on=IDENTITY_KEY)
    pending = (
        todo.merge(
            made[IDENTITY_KEY].drop_duplicates(), on=IDENTITY_KEY, how="left", indicator=True
        )
        .query("_merge == 'left_only'")
        .drop(columns="_merge")
    )
    first = ~pending.duplicated(IDENTITY_KEY)
    run = pending[first].reset_index(drop=True)
    outputs = [
        GenerationLayout.fake(c, d, i, t)
        for c, d, i, t in run[["checkpoint", "direction", "index", "target_id"]].itertuples(
            index=False
        )
    ]
    sources = run[IDENTITY_KEY + ["direction", "index", "real_path"]].assign(output_path=outputs)
    sources = sources.rename(columns=source_columns)
    waiting = pending[~first].merge(sources, on=IDENTITY_KEY)
    return run, pd.concat([made, waiting], ignore_index=True)


def remove_outputs(manifest: pd.DataFrame, stale: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    """Delete the files of `stale` rows and of real images no remaining row uses; return the
    manifest without those rows."""
    key = ["checkpoint", "direction", "index"]
    flags = manifest[key].merge(stale[key].assign(_stale=True), on=key, how="left")["_stale"]
    kept = manifest[flags.isna().to_numpy()].reset_index(drop=True)
    for rel in stale["output_path"]:
        (out_dir / rel).unlink(missing_ok=True)
    for rel in set(stale["real_path"]) - set(kept["real_path"]):
        (out_dir / rel).unlink(missing_ok=True)
    return kept


def link_or_copy(src: Path, dst: Path) -> None:
    """`dst` gets `src`'s bytes, atomically: a hard link where the filesystem allows one
    (no second copy on disk), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another filesystem, or one without hard links (FAT, some network mounts)
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    # Renaming a link onto another link of the same file is a no-op that leaves `tmp`.
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()


def write_identical(links: pd.DataFrame, sources: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    """Manifest rows of the links whose source job is in `sources` (manifest rows): the
    source's files when it is ok, its error otherwise."""
    status = sources[SOURCE_KEY + ["source_id", "target_id", "status", "error"]].rename(
        columns={"direction": "from_direction", "index": "from_index"}
    )
    ready = links.merge(status, on=IDENTITY_KEY + ["from_direction", "from_index"])
    rows = []
    for r in ready.itertuples(index=False):
        rel = GenerationLayout.fake(r.checkpoint, r.direction, int(r.index), r.target_id)
        error = None if r.status == "ok" else f"{r.error} (same inputs as {r.from_output})"
        if error is None:
            try:
                link_or_copy(out_dir / r.from_output, out_dir / rel)
                if not (out_dir / r.real_path).is_file():
                    link_or_copy(out_dir / r.from_real, out_dir / r.real_path)
            except OSError as exc:
                error = f"{type(exc).__name__}: {exc}"
        rows.append(
            (
                r.checkpoint,
                r.direction,
                int(r.index),
                r.source_id,
                r.target_id,
                r.real_path,
                rel,
                "ok" if error is None else "error",
                error,
                r.inputs,
                None,
            )
        )
    return pd.DataFrame(rows, columns=MANIFEST_SCHEMA.names)


def _read_map(npz_path: str, keypoints, fid: str) -> np.ndarray:
    from pipeline.posemap import load_posemap, render_map

    if os.path.exists(npz_path):
        return load_posemap(Path(npz_path))
    if keypoints is not None:
        h, w = int(keypoints[0]), int(keypoints[1])
        return render_map(keypoints[2:20], keypoints[20:38], h, w)
    raise DataError(
        f"pose map {npz_path} not found and no keypoints row for {fid}; "
        "run the posemaps (or keypoints) stage"
    )


def one_hot_coords(pair: np.ndarray) -> np.ndarray:
    """(36, 2) int16 (y, x) of the single 1 in each channel of a one-hot map pair, -1 where
    a channel is empty. Twelve bytes instead of 1.6 MB per job between the load tasks and
    the model actors; `maps_from_coords` rebuilds the identical array."""
    ys, xs, ks = np.nonzero(pair)
    if pair.dtype != np.uint8 or (pair[ys, xs, ks] != 1).any() or len(np.unique(ks)) != len(ks):
        raise DataError(
            "pose map is not one-hot (a gaussian map?) but generate.sparse_maps is "
            "true: unset it (null: picked from the maps' kind) or set it to false"
        )
    coords = np.full((pair.shape[2], 2), -1, np.int16)
    coords[ks, 0], coords[ks, 1] = ys, xs
    return coords


def maps_from_coords(coords: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, 36, 2) coordinates -> (N, H, W, 36) uint8 one-hot map pairs."""
    maps = np.zeros((len(coords), height, width, coords.shape[1]), np.uint8)
    n, k = np.nonzero(coords[..., 0] >= 0)
    maps[n, coords[n, k, 0], coords[n, k, 1], k] = 1
    return maps


def map_transport(sparse_maps: bool | None, kind: dict | None) -> bool:
    """Whether map pairs travel as one-hot coordinates: the override when set, else by the
    kind the posemaps stage recorded (None: no maps, they are rendered one-hot)."""
    if sparse_maps is not None:
        return sparse_maps
    return kind is None or kind["kind"] == "one-hot"


def jpeg_quality(minmax: bool) -> int | None:
    """The published mode saves at PIL's defaults (None), the default mode at quality 95."""
    from pipeline.imaging import JPEG_QUALITY

    return None if minmax else JPEG_QUALITY


def load_inputs(
    batch: dict[str, np.ndarray],
    root: str,
    out_dir: str,
    frame: tuple[int, int],
    minmax: bool,
    sparse: bool = True,
) -> dict[str, np.ndarray]:
    """CPU task: decode the condition images and both pose maps of each job, and write the
    real (target) image when it is not there yet. A job that fails keeps an error and
    zero arrays, so the batch keeps its shape. With `sparse`, one-hot map pairs travel as
    coordinates (`coords`) and the model actor rebuilds them; else dense float32 maps
    (gaussian maps, and one-hot ones rendered for missing files, side by side)."""
    from pipeline.imaging import encode_jpeg, load_rgb, published_input_tensor, published_uint8
    from pipeline.tables import write_bytes_atomic

    n = len(batch["index"])
    h, w = frame
    images = np.zeros((n, h, w, 3), np.uint8)
    maps = None
    coords = np.full((n, 36, 2), -1, np.int16)
    errors = [""] * n  # "" = fine: an all-null column would not survive Ray's Arrow blocks
    for i in range(n):
        try:
            cond = np.asarray(load_rgb(safe_path(root, batch["source_path"][i])))
            if cond.shape[:2] != frame:
                raise DataError(
                    f"image is {cond.shape[0]}x{cond.shape[1]}, expected {h}x{w} "
                    "like the rest of the test set"
                )
            pair = np.concatenate(
                [
                    _read_map(
                        batch[f"{role}_map"][i],
                        batch[f"{role}_keypoints"][i],
                        batch[f"{role}_id"][i],
                    )
                    for role in ("source", "target")
                ],
                axis=2,
            )
            if pair.shape[:2] != frame:
                raise DataError(f"pose map is {pair.shape[0]}x{pair.shape[1]}, image is {h}x{w}")
            if sparse:
                coords[i] = one_hot_coords(pair)
            real = Path(out_dir) / batch["real_path"][i]
            if not real.is_file():
                target = load_rgb(safe_path(root, batch["target_path"][i]))
                # The published script stretched real images too; keep them comparable.
                arr = (
                    published_uint8(published_input_tensor(target))
                    if minmax
                    else np.asarray(target)
                )
                write_bytes_atomic(real, encode_jpeg(arr, jpeg_quality(minmax)))
        except (DataError, OSError, ValueError, zipfile.BadZipFile) as exc:  # this job's data
            errors[i] = f"{type(exc).__name__}: {exc}"
            continue
        images[i] = cond
        if not sparse:
            if maps is None:
                maps = np.zeros((n, h, w, pair.shape[2]), np.float32)
            maps[i] = pair
    meta = {k: batch[k] for k in JOB_COLUMNS}
    if sparse:
        return {**meta, "image": images, "coords": coords, "error": np.array(errors)}
    if maps is None:
        maps = np.zeros((n, h, w, 36), np.float32)
    return {**meta, "image": images, "maps": maps, "error": np.array(errors)}


class Generator:
    """Ray Data actor: NetG is built once per actor; a batch's checkpoint is loaded into it
    when it differs from the previous batch's, so all checkpoints stream through one pool."""

    def __init__(
        self, ngf: int, dtype: str, channels_last: bool, minmax: bool, actors_per_node: int
    ):
        from pipeline.api import autocast_dtype
        from pipeline.ray_pool import use_node_threads
        from pipeline.runtime import best_device, current_node

        self.device = best_device()
        if self.device == "cpu":
            use_node_threads(actors_per_node)
        self.ngf, self.channels_last, self.minmax = ngf, channels_last, minmax
        self.dtype = autocast_dtype(dtype, self.device)
        self.net = None
        self.loaded: str | None = None
        self.node = current_node()

    def use_checkpoint(self, path: str) -> None:
        from pipeline.api import load_generator
        from pipeline.weights import load_into

        if path == self.loaded:
            return
        if self.net is None:
            self.net = load_generator(path, self.ngf, self.device, self.channels_last)
        else:
            load_into(self.net, path)
        self.loaded = path

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipeline.api import generate_uint8
        from pipeline.runtime import inject_fault

        inject_fault("generate")

        images = batch["image"]
        maps = (
            maps_from_coords(batch["coords"], *images.shape[1:3])
            if "coords" in batch
            else batch["maps"]
        )
        fakes = np.zeros_like(images)
        ok = batch["error"] == ""
        for path in pd.unique(batch["checkpoint_path"][ok]):
            rows = ok & (batch["checkpoint_path"] == path)
            self.use_checkpoint(path)
            fakes[rows] = generate_uint8(
                self.net,
                images[rows],
                maps[rows],
                minmax=self.minmax,
                dtype=self.dtype,
                channels_last=self.channels_last,
            )
        node = np.full(len(images), self.node or "")
        return {**{k: batch[k] for k in JOB_COLUMNS}, "error": batch["error"], "fake": fakes,
                "node": node}  # fmt: skip


def write_outputs(batch: dict[str, np.ndarray], out_dir: str, minmax: bool = False) -> pd.DataFrame:
    """CPU task: encode and write the generated JPEGs; return their manifest rows."""
    from pipeline.imaging import encode_jpeg
    from pipeline.tables import write_bytes_atomic

    rows = []
    for i in range(len(batch["index"])):
        ckpt, direction, index = (
            batch["checkpoint"][i],
            batch["direction"][i],
            int(batch["index"][i]),
        )
        target = batch["target_id"][i]
        rel = GenerationLayout.fake(ckpt, direction, index, target)
        error = batch["error"][i] or None
        if error is None:
            try:
                jpeg = encode_jpeg(batch["fake"][i], jpeg_quality(minmax))
                write_bytes_atomic(Path(out_dir) / rel, jpeg)
            except OSError as exc:
                error = f"{type(exc).__name__}: {exc}"
        rows.append(
            (
                ckpt,
                direction,
                index,
                batch["source_id"][i],
                target,
                batch["real_path"][i],
                rel,
                "ok" if error is None else "error",
                error,
                batch["inputs"][i],
                batch["node"][i] or None,
            )
        )
    return pd.DataFrame(rows, columns=MANIFEST_SCHEMA.names)


def frame_size(root: str | os.PathLike, paths: list[str]) -> tuple[int, int]:
    """(H, W) of the test images: that of the first readable one. NetG needs multiples of 16."""
    from pipeline.imaging import ImageError, load_rgb

    for rel in paths:
        try:
            w, h = load_rgb(safe_path(root, rel)).size
        except (ImageError, DataError):
            continue
        if h % 16 or w % 16:
            raise DataError(
                f"test images are {h}x{w} ({rel}); NetG needs height and width "
                "divisible by 16 (DeepFashion frames are 256x176)"
            )
        return h, w
    raise DataError(f"none of the {len(paths)} test images under {root} could be read")


# --- the Ray wrapper -------------------------------------------------------------------


def default_checkpoints(cfg: Config) -> list[str]:
    if cfg.generate.checkpoints:
        return list(cfg.generate.checkpoints)
    ckpt_dir = OutputLayout(cfg.output.root).checkpoints
    if not ckpt_dir.is_dir():
        raise DataError(
            f"no --checkpoint given, generate.checkpoints is empty and {ckpt_dir} does "
            "not exist; train first or pass --checkpoint PATH"
        )
    return [str(ckpt_dir)]


def run_generate(
    cfg: Config,
    checkpoints: list[str] | None = None,
    out: str | None = None,
    pairs_file: str | None = None,
    limit: int | None = None,
    dedup: bool = True,
) -> StageResult:
    """Generate every pending (checkpoint, direction, pair) image; see the module doc.
    `dedup` False runs identical jobs again (for benchmarks of the deduplication)."""
    import ray
    from tqdm import tqdm

    from pipeline.api import check_checkpoint
    from pipeline.ray_pool import plan_pool, task_options
    from pipeline.runtime import init_ray
    from pipeline.weights import checkpoint_id, expand_checkpoints
    from stages.posemaps import describe_posemap_kind, recorded_posemap_kind

    gc = cfg.generate
    root = str(Path(cfg.dataset.root).resolve())
    out_dir = Path(out or OutputLayout(cfg.output.root).generated).resolve()
    result = StageResult(
        "generate", outputs={"generated": str(out_dir), "manifest": str(out_dir / MANIFEST)}
    )
    paths = expand_checkpoints(checkpoints or default_checkpoints(cfg), cfg.weights.checkpoint_dir)
    for path in paths:  # fail on a bad checkpoint before any work, naming the file
        check_checkpoint(path, gc.ngf)
    ids = [checkpoint_id(p) for p in paths]
    if len(set(ids)) < len(ids):
        raise DataError(
            f"checkpoints {[str(p) for p in paths]} repeat an id ({ids}): each id is one "
            "output folder fake_images/iter_<id>; pass each checkpoint once"
        )

    pairs = read_test_pairs(root, pairs_file or gc.pairs)
    if limit is not None:
        pairs = pairs.head(limit)
    jobs = attach_map_sources(generation_jobs(pairs), root)
    frame = frame_size(root, pairs["imgA"].tolist())
    output = manifest_output(out_dir)
    manifest = output.done()
    mode = save_mode(gc.minmax)
    with ContentCache(OutputLayout(cfg.output.root).state / "content.sqlite") as cache:
        base = input_digests(jobs, root, cache)
        per_ckpt = [with_checkpoint(jobs, base, c, cache.digest(p), mode).assign(
                    checkpoint_path=str(p)) for p, c in zip(paths, ids, strict=True)]  # fmt: skip
    stale = stale_rows(manifest, pd.concat(per_ckpt, ignore_index=True), ids)
    if len(stale):
        manifest = remove_outputs(manifest, stale, out_dir)
        output.commit(manifest)
        result.notes.append(f"{len(stale)} earlier image(s) of changed or removed pairs removed")
    todo_parts = []
    for ckpt_jobs, ckpt in zip(per_ckpt, ids, strict=True):
        todo = pending_jobs(ckpt_jobs, manifest, ckpt, out_dir)
        result.skipped += len(jobs) - len(todo)
        todo_parts.append(todo)
    result.rows_in = len(jobs) * len(paths)
    todo = pd.concat(todo_parts, ignore_index=True)
    kind = recorded_posemap_kind(DatasetLayout(root).posemap_dir(TEST_SPLIT))
    sparse = map_transport(gc.sparse_maps, kind)
    maps_text = describe_posemap_kind(kind)
    record_generation(out_dir, mode, ids, maps_text)
    links, generated = todo.iloc[:0], 0
    if dedup:
        keys = todo[IDENTITY_KEY].drop_duplicates()
        done = same_inputs(done_rows(manifest.merge(keys, on=IDENTITY_KEY), out_dir), todo,
                           IDENTITY_KEY)  # fmt: skip
        todo, links = identical_jobs(todo, done)
        linked = write_identical(links, done, out_dir)
        if len(linked):
            output.add(linked)
            output.flush()
            result.rows_out = int((linked["status"] == "ok").sum())
            result.errors = int((linked["status"] == "error").sum())
    if not todo.empty:
        init_ray(cfg.ray)
        pool = plan_pool(gc.concurrency)
        # One block per batch: each block is one load task, one forward, one write task.
        blocks = [todo.iloc[i : i + gc.batch_size] for i in range(0, len(todo), gc.batch_size)]
        # The published script ran NetG in the default memory format; channels_last changes
        # the last bits, which the published save's truncation turns into grey levels.
        channels_last = gc.channels_last and not gc.minmax
        ds = ray.data.from_pandas(blocks).map_batches(
            load_inputs,
            batch_size=gc.batch_size,
            batch_format="numpy",
            fn_kwargs=dict(
                root=root, out_dir=str(out_dir), frame=frame, minmax=gc.minmax, sparse=sparse
            ),
            **task_options(),
        )
        ds = pool.map(
            ds, Generator, gc.batch_size, ngf=gc.ngf, dtype=gc.dtype, minmax=gc.minmax,
            channels_last=channels_last,
        )  # fmt: skip
        ds = ds.map_batches(
            write_outputs,
            batch_size=gc.batch_size,
            batch_format="numpy",
            fn_kwargs=dict(out_dir=str(out_dir), minmax=gc.minmax),
            **task_options(),
        )
        try:
            with tqdm(
                total=len(todo), desc=f"generate ({len(paths)} checkpoint(s))", unit="img"
            ) as bar:
                for part in ds.iter_batches(batch_size=None, batch_format="pandas"):
                    generated += int((part["status"] == "ok").sum())
                    new = [part, write_identical(links, part, out_dir)] if len(links) else [part]
                    for rows in new:
                        output.add(rows)
                        result.rows_out += int((rows["status"] == "ok").sum())
                        result.errors += int((rows["status"] == "error").sum())
                    bar.update(len(part))
        finally:  # an interrupted run still records what it wrote, so a rerun resumes there
            output.flush()
    manifest = output.done().sort_values(MANIFEST_KEY, ignore_index=True)
    if output.unmerged or not output.path.exists():
        output.commit(manifest)
    result.notes.append(
        f"{len(paths)} checkpoint(s) x {len(pairs)} test pairs x 2 directions -> {out_dir}"
    )
    copied = result.rows_out - generated
    result.notes.append(
        f"{generated} image(s) generated, {copied} written from an identical job "
        "(same checkpoint and inputs: A->B of (a, b) is B->A of (b, a))"
    )
    result.notes.append(f"saved in {mode} mode: {SAVE_MODES[mode]}")
    transport = "coordinates" if sparse else "dense maps"
    result.notes.append(f"pose maps: {maps_text}, sent to the model as {transport}")
    if result.errors:
        first = manifest[manifest["status"] == "error"].iloc[0]
        result.notes.append(
            f"{result.errors} error row(s) in the manifest, e.g. {first['real_path']}: "
            f"{first['error']}"
        )
    return result.finish()


# --- CLI -------------------------------------------------------------------------------


def _generate_inputs(cfg: Config) -> list[Path]:
    layout = DatasetLayout(cfg.dataset.root)
    ckpts = [Path(c) for c in cfg.generate.checkpoints] or [
        OutputLayout(cfg.output.root).checkpoints
    ]
    return [
        layout.pairs_table,
        layout.keypoints_table,
        layout.posemap_dir(TEST_SPLIT),
        layout.images,
        *ckpts,
    ]


STAGE = StageSpec(
    name="generate",
    version=1,
    run=lambda cfg, fresh: run_generate(cfg),
    config_keys=(
        "generate.checkpoints",
        "generate.ngf",
        "generate.dtype",
        "generate.minmax",
        "generate.pairs",
    ),
    inputs=_generate_inputs,
    outputs=lambda cfg: [OutputLayout(cfg.output.root).manifest],
    previous=lambda cfg: [OutputLayout(cfg.output.root).generated],
)


@click.command("generate")
@click.option(
    "--checkpoint",
    "checkpoints",
    multiple=True,
    metavar="PATH|ID|DIR",
    help="A netG_<iter>.pth file, an iteration id (looked up in weights.checkpoint_dir), "
    "or a directory (every netG_<iter>.pth in it). Repeatable. Default: "
    "generate.checkpoints, else every netG_*.pth in <output.root>/train/checkpoints.",
)
@click.option(
    "--ngf",
    type=int,
    default=None,
    help="Generator width of the checkpoints (default generate.ngf).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Output directory (default <output.root>/generated).",
)
@click.option(
    "--minmax/--no-minmax",
    default=None,
    help="Published save mode: the published test script's images (each image, real "
    "ones too, stretched to its own min..max, times 255 truncated, JPEG at PIL's "
    "defaults, quality 75), byte for byte on CPU fp32. Off (default "
    "generate.minmax): (x+1)/2 rounded, JPEG quality 95, NOT comparable with "
    "published numbers.",
)
@click.option(
    "--batch-size", type=int, default=None, help="Images per forward (default generate.batch_size)."
)
@click.option(
    "--pairs",
    "pairs_file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="Pairs table (.parquet) or legacy pairs CSV (default: the dataset's pairs table, "
    "else test_img_pairs.csv).",
)
@click.option("--limit", type=int, default=None, help="Only the first N test pairs (quick runs).")
@click.pass_obj
def generate_command(obj, checkpoints, ngf, out, minmax, batch_size, pairs_file, limit) -> None:
    """Generate every test pair with one or more checkpoints, both directions.

    \b
    Inputs: the test pairs (tables/pairs.parquet, split test, or test_img_pairs.csv), the
    images under dataset.root, pose maps test_pose_maps/<fid>.npz (rendered from
    tables/keypoints.parquet when missing), generator checkpoints.
    Outputs under OUT, as the published test script lays them out (n = 0-based index of the
    pair in the pairs table, counted per direction):
      real_images/real_B/<n>@<fidB>.jpg             target images, A->B
      real_images/real_A/<n>@<fidA>.jpg             target images, B->A
      fake_images/iter_<ckpt>/fake_B/<n>@<fidB>.jpg generated A->B (condition A, map pair A,B)
      fake_images/iter_<ckpt>/fake_A/<n>@<fidA>.jpg generated B->A
      manifest.parquet                              one row per generated image, status ok/error
      generation.json                               save mode (published / default), pose maps
    Save modes: --minmax writes the published test script's images (comparable with the
    published numbers; byte for byte on CPU with generate.dtype fp32); the default (x+1)/2
    mapping at JPEG quality 95 is NOT comparable with published numbers. One OUT holds one mode.
    A job with the same checkpoint and inputs as another (B->A of (b, a) is A->B of (a, b))
    runs once; its file is a hard link (or copy) of the other's, with its own manifest row.
    One-hot or gaussian pose maps are told apart by posemaps' pose_maps.json (or the maps'
    dtype); generate.sparse_maps true/false overrides the transport picked from that.
    A rerun skips images already ok in the manifest; a bad input becomes an error row.
    NetG runs in a Ray actor pool of generate.concurrency actors (default: one per GPU, else
    one per CPU node), autocast generate.dtype (auto = bf16 on GPU, fp32 on CPU), channels_last.
    Example: run_pipeline.py generate --checkpoint out/train/checkpoints --ngf 8 --out out/generated
    """
    cfg = obj.cfg
    if ngf is not None:
        cfg.generate.ngf = ngf
    if minmax is not None:
        cfg.generate.minmax = minmax
    if batch_size is not None:
        cfg.generate.batch_size = batch_size
    result = run_generate(cfg, list(checkpoints) or None, out, pairs_file, limit)
    click.echo(result.summary())
