"""Generation per batch, run in Ray Data tasks and actors: decode the condition images and
pose maps (and write the real images), NetG forward in an actor that holds the network,
encode and write the generated JPEGs. Failures of a job's data become its error."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core import storage
from pipeline.core.errors import DataError
from pipeline.core.layout import GenerationLayout
from pipeline.core.object_path import data_path
from pipeline.core.schemas import MANIFEST_SCHEMA
from pipeline.generator.generation_plan import JOB_COLUMNS
from pipeline.pose.posemap import one_hot_coords as posemap_coords


def _read_map(npz_path: str | None, keypoints, fid: str) -> np.ndarray:
    from pipeline.pose.posemap import load_posemap, render_map

    try:  # one read, no existence check first (on S3 each is a request)
        if npz_path is not None:  # None: maps are not exported (posemaps.export)
            return load_posemap(npz_path)
    except FileNotFoundError:
        pass
    if keypoints is not None:
        h, w = int(keypoints[0]), int(keypoints[1])
        return render_map(keypoints[2:20], keypoints[20:38], h, w)
    raise DataError(
        f"pose map {npz_path} not found and no keypoints row for {fid}; "
        "run the posemaps (or keypoints) stage"
    )


# Per process, since a test set uses each image in many pairs: (map file identity or
# keypoints) -> ((H, W), coordinates or None if not one-hot), read and scanned once; and
# (target image identity, save mode, output dir) -> a real image file written from it.
_COORDS: dict[tuple, tuple[tuple[int, int], np.ndarray | None]] = {}
_REALS: dict[tuple, Path] = {}
_CACHE_MAX = 200_000  # entries (~100 bytes each) before a cache starts over


def _remember(cache: dict, key: tuple, value) -> None:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value


def map_coords(
    npz_path: str, keypoints, fid: str, state: str
) -> tuple[tuple[int, int], np.ndarray]:
    """(H, W) and (18, 2) int16 (y, x) coordinates of one one-hot pose map
    (`posemap.one_hot_coords`): twelve bytes per keypoint travel from the load tasks to
    the model actors instead of 810 KB per map; `maps_from_coords` rebuilds the array.
    Cached by the map's `state` as the plan recorded it (generation_plan.STATE_COLUMNS),
    so a map used by many pairs is read once and never asked about again."""
    key = (npz_path, fid, state)
    if key not in _COORDS:
        pose = _read_map(npz_path, keypoints, fid)
        _remember(_COORDS, key, (pose.shape[:2], posemap_coords(pose)))
    shape, coords = _COORDS[key]
    if coords is None:
        raise DataError(
            f"pose map of {fid} is not one-hot (a gaussian map?) but generate.sparse_maps is "
            "true: unset it (null: picked from the maps' kind) or set it to false"
        )
    return shape, coords


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
    from pipeline.core.imaging import JPEG_QUALITY

    return None if minmax else JPEG_QUALITY


def write_real(
    real: Path,
    target: Path,
    target_state: str,
    out_dir: str,
    minmax: bool,
    frame: tuple[int, int] | None = None,
) -> None:
    """The target image at `real` as the save mode writes real images, brought to `frame`
    like the condition images (`imaging.fit_frame`) when it has another size. The
    published layout has one real file per pair and direction, so the same target recurs;
    a file this process already wrote from the same target bytes is linked instead of made
    again."""
    from pipeline.core.atomic_io import write_bytes_atomic
    from pipeline.core.imaging import (
        encode_jpeg,
        fit_frame,
        load_rgb,
        published_input_tensor,
        published_uint8,
    )
    from pipeline.generator.generation_plan import link_or_copy

    key = (str(target), target_state, minmax, out_dir, frame)
    made = _REALS.get(key)
    if made is not None and made.is_file():
        link_or_copy(made, real)
        return
    image = load_rgb(target)
    if frame is not None and image.size != (frame[1], frame[0]):
        image = fit_frame(image, frame)
    # The published script stretched real images too; keep them comparable.
    arr = published_uint8(published_input_tensor(image)) if minmax else np.asarray(image)
    write_bytes_atomic(real, encode_jpeg(arr, jpeg_quality(minmax)))
    _remember(_REALS, key, real)


def load_inputs(
    batch: dict[str, np.ndarray],
    root: str,
    out_dir: str,
    frame: tuple[int, int],
    minmax: bool,
    sparse: bool = True,
) -> dict[str, np.ndarray]:
    """CPU task: decode the condition images and both pose maps of each job, and write the
    real (target) image when it is not there yet. Images and maps of another size than
    `frame` (h, w) are brought to it as the published API does (`imaging.fit_frame`). A
    job that fails keeps an error and zero arrays, so the batch keeps its shape. With
    `sparse`, one-hot map pairs travel as coordinates (`coords`) and the model actor
    rebuilds them; else dense float32 maps (gaussian maps, and one-hot ones rendered for
    missing files, side by side)."""
    from pipeline.core.imaging import fit_frame, read_rgb
    from pipeline.pose.posemap import fit_coords, fit_map

    n = len(batch["index"])
    h, w = frame
    images = np.zeros((n, h, w, 3), np.uint8)
    maps = None
    coords = np.full((n, 36, 2), -1, np.int16)
    errors = [""] * n  # "" = fine: an all-null column would not survive Ray's Arrow blocks
    for i in range(n):
        try:
            image = read_rgb(root, batch["source_path"][i])
            roles = [
                (batch[f"{role}_map"][i], batch[f"{role}_keypoints"][i], batch[f"{role}_id"][i])
                for role in ("source", "target")
            ]
            if sparse:
                states = (batch["source_map_state"][i], batch["target_map_state"][i])
                parts = [map_coords(*role, s) for role, s in zip(roles, states, strict=True)]
                sizes = [shape for shape, _ in parts]
            else:
                dense = [_read_map(*role) for role in roles]
                sizes = [m.shape[:2] for m in dense]
            # The map marks pixels of this image: of another size, it would misplace them.
            if sizes[0] != (image.height, image.width):
                raise DataError(
                    f"pose map is {sizes[0][0]}x{sizes[0][1]}, image is "
                    f"{image.height}x{image.width}"
                )
            fits = (image.height, image.width) == frame
            cond = np.asarray(image if fits else fit_frame(image, frame))
            if sparse:
                coords[i] = np.concatenate(
                    [c if size == frame else fit_coords(c, size, frame) for size, c in parts]
                )
            else:
                pair = np.concatenate(
                    [m if m.shape[:2] == frame else fit_map(m, frame) for m in dense], axis=2
                )
            if batch["write_real"][i]:  # the plan's reals_to_write
                real = data_path(out_dir) / batch["real_path"][i]
                target = storage.safe_join(root, batch["target_path"][i])
                write_real(real, target, batch["target_state"][i], out_dir, minmax, frame)
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
        from pipeline.cluster.ray_pool import use_node_threads
        from pipeline.cluster.runtime import best_device, current_node
        from pipeline.generator.inference_api import autocast_dtype

        self.device = best_device()
        if self.device == "cpu":
            use_node_threads(actors_per_node)
        self.ngf, self.channels_last, self.minmax = ngf, channels_last, minmax
        self.dtype = autocast_dtype(dtype, self.device)
        self.net = None
        self.loaded: str | None = None
        self.node = current_node()

    def use_checkpoint(self, path: str) -> None:
        from pipeline.core.weights import load_into
        from pipeline.generator.inference_api import load_generator

        if path == self.loaded:
            return
        if self.net is None:
            self.net = load_generator(path, self.ngf, self.device, self.channels_last)
        else:
            load_into(self.net, path)
        self.loaded = path

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipeline.cluster.runtime import inject_fault
        from pipeline.generator.inference_api import generate_uint8

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
    """CPU task: encode and write the generated JPEGs, record their manifest rows in a part
    file of the manifest (`generation_plan.manifest_output`) and return them. Recorded here, a
    batch whose images are on disk is done for a rerun even when the run is stopped before
    its rows reach the driver: Ray finishes batches well ahead of what the driver has
    taken from it."""
    from pipeline.core.atomic_io import write_bytes_atomic
    from pipeline.core.imaging import encode_jpeg
    from pipeline.generator.generation_plan import manifest_output

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
                write_bytes_atomic(data_path(out_dir) / rel, jpeg)
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
    table = pd.DataFrame(rows, columns=MANIFEST_SCHEMA.names)
    recorded = manifest_output(out_dir)
    recorded.add(table)
    recorded.flush()
    return table
