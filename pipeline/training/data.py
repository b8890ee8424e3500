"""Training data: the train pairs as (condition, target, map pair) batches, decoded per item
(`PairImages`) or once into memory (`InMemoryPairs`), and the per-rank batch stream with an
exact resume cursor."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pandas as pd

from pipeline.core.atomic_io import read_table
from pipeline.core.errors import DataError
from pipeline.core.layout import DatasetLayout

# Failures of one pair's files: the pair is skipped and counted, training goes on.
PAIR_ERRORS = (OSError, ValueError, KeyError, zipfile.BadZipFile)


def load_train_pairs(root: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The train rows of the pairs table and the keypoints table (None when absent, then
    every pose map must exist as npz)."""
    from pipeline.core.schemas import KEYPOINTS_SCHEMA, PAIRS_SCHEMA

    layout = DatasetLayout(root)
    if not layout.pairs_table.exists():
        raise DataError(
            f"no pairs table at {layout.pairs_table}: run the keypoints, posemaps and "
            "pairs stages on this dataset root first"
        )
    pairs = read_table(layout.pairs_table, PAIRS_SCHEMA)
    pairs = pairs[pairs["split"] == "train"].reset_index(drop=True)
    if pairs.empty:
        raise DataError(f"{layout.pairs_table} has no pairs with split == 'train'")
    keypoints = None
    if layout.keypoints_table.exists():
        keypoints = read_table(layout.keypoints_table, KEYPOINTS_SCHEMA)
    return pairs, keypoints


def training_size(root: str | os.PathLike, pairs: pd.DataFrame) -> tuple[int, int]:
    """(H, W) of the first readable condition image; both must be divisible by 16."""
    from pipeline.core.imaging import ImageError, read_rgb

    for rel in pairs["imgA"].head(50):
        try:
            im = read_rgb(root, rel)
        except (ImageError, DataError):
            continue
        if im.height % 16 or im.width % 16:
            raise DataError(
                f"{rel}: NetG needs H and W divisible by 16, got {im.height}x{im.width}"
            )
        return im.height, im.width
    raise DataError(f"none of the first 50 train images under {root} could be read")


class PairImages:
    """Map-style dataset over the train pairs: item i is (A, B, maps) as float tensors
    (A, B in [-1, 1], maps = concat(mapA, mapB) channels-first), or a string saying why
    the pair could not be loaded. Pose maps come from the npz files when present (and
    `map_files`: posemaps.export), else are rendered from the keypoints table."""

    def __init__(
        self,
        root: str | os.PathLike,
        pairs: pd.DataFrame,
        keypoints: pd.DataFrame | None,
        size: tuple[int, int],
        map_files: bool = True,
    ):
        self.root = str(root)
        self.map_files = map_files
        self.layout = DatasetLayout(root)
        self.pairs = pairs.reset_index(drop=True)
        self.keypoints = (
            {}
            if keypoints is None
            else {
                r.file_id: (np.asarray(r.x), np.asarray(r.y))
                for r in keypoints.itertuples()
                if r.error is None or pd.isna(r.error)
            }
        )
        self.size = tuple(size)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        row = self.pairs.iloc[i]
        try:
            return self._load(row)
        except PAIR_ERRORS as exc:
            return f"pair {i} ({row['imgA']} -> {row['imgB']}): {exc}"

    def collate(self, items: list) -> tuple:
        import torch

        return tuple(torch.stack(parts) for parts in zip(*items, strict=True))

    def image_array(self, rel: str) -> np.ndarray:
        """(H, W, 3) uint8 of one image at the training size."""
        from pipeline.core.imaging import read_rgb

        im = read_rgb(self.root, rel)
        if (im.height, im.width) != self.size:
            raise DataError(
                f"{rel} is {im.height}x{im.width}, training size is {self.size[0]}x{self.size[1]}"
            )
        return np.asarray(im)

    def pose_map(self, split: str, fid: str) -> np.ndarray:
        from pipeline.pose.posemap import load_posemap, render_map

        path = self.layout.posemap(split, fid)
        if self.map_files and path.is_file():
            pose = load_posemap(path)
        elif fid in self.keypoints:
            pose = render_map(*self.keypoints[fid], *self.size)
        else:
            raise DataError(f"no pose map {path.name} and no keypoints for {fid}")
        if pose.shape != (*self.size, 18):
            raise DataError(
                f"pose map of {fid} has shape {pose.shape}, expected {(*self.size, 18)}"
            )
        return pose

    def _load(self, row):
        import torch

        from pipeline.core.imaging import to_tensor

        split = row["split"]
        maps = np.concatenate(
            [self.pose_map(split, row["fidA"]), self.pose_map(split, row["fidB"])], axis=2
        )
        maps = torch.from_numpy(np.ascontiguousarray(maps.transpose(2, 0, 1))).float()
        return (
            to_tensor(self.image_array(row["imgA"])),
            to_tensor(self.image_array(row["imgB"])),
            maps,
        )


class InMemoryPairs:
    """The same items as `PairImages`, every image and pose map decoded once: images as
    uint8 arrays, one-hot maps as (18, 2) coordinates (dense arrays otherwise). Float
    tensors exist only for the batch being trained on (`collate`). A pair whose files
    failed stays in the index and yields its reason, as it would when streamed."""

    def __init__(self, source: PairImages, images: dict, maps: dict, errors: dict):
        self.size = source.size
        self.pairs = source.pairs
        self.images, self.maps, self.errors = images, maps, errors

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        if i in self.errors:
            return self.errors[i]
        row = self.pairs.iloc[i]
        split = row["split"]
        return (
            self.images[row["imgA"]],
            self.images[row["imgB"]],
            self.maps[(split, row["fidA"])],
            self.maps[(split, row["fidB"])],
        )

    def collate(self, items: list) -> tuple:
        """(A, B, maps) float batches, equal to stacking `PairImages` items."""
        import torch

        a = np.stack([item[0] for item in items])
        b = np.stack([item[1] for item in items])
        maps = np.zeros((len(items), 36, *self.size), np.float32)
        for n, item in enumerate(items):
            for side, pose in enumerate(item[2:]):
                channels = maps[n, 18 * side : 18 * (side + 1)]
                if pose.ndim == 2:
                    k = np.nonzero(pose[:, 0] >= 0)[0]
                    channels[k, pose[k, 0], pose[k, 1]] = 1.0
                else:
                    channels[:] = pose.transpose(2, 0, 1)
        return images_to_tensor(a), images_to_tensor(b), torch.from_numpy(maps)


def images_to_tensor(batch: np.ndarray):
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1], the arithmetic of `to_tensor`."""
    import torch

    x = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
    return x.float().div(127.5).sub(1.0)


def decode_in_memory(source: PairImages, max_bytes: int) -> InMemoryPairs | None:
    """Decode every image and pose map of `source` once; None when they would take more
    than `max_bytes` (the caller then streams)."""
    from pipeline.pose.posemap import one_hot_coords

    h, w = source.size
    names = pd.unique(source.pairs[["imgA", "imgB"]].to_numpy().ravel())
    if len(names) * h * w * 3 > max_bytes:
        return None
    images: dict[str, np.ndarray | str] = {}
    maps: dict[tuple[str, str], np.ndarray | str] = {}
    used = 0
    for rel in names:
        try:
            images[rel] = source.image_array(rel)
            used += images[rel].nbytes
        except PAIR_ERRORS as exc:
            images[rel] = str(exc)
    for split, fid in {
        key
        for row in source.pairs.itertuples()
        for key in ((row.split, row.fidA), (row.split, row.fidB))
    }:
        try:
            pose = source.pose_map(split, fid)
        except PAIR_ERRORS as exc:
            maps[(split, fid)] = str(exc)
            continue
        coords = one_hot_coords(pose)
        maps[(split, fid)] = pose if coords is None else coords
        used += maps[(split, fid)].nbytes
        if used > max_bytes:
            return None
    errors = {}
    for i, row in enumerate(source.pairs.itertuples()):
        parts = (images[row.imgA], images[row.imgB], maps[(row.split, row.fidA)])
        parts += (maps[(row.split, row.fidB)],)
        reasons = [p for p in parts if isinstance(p, str)]
        if reasons:
            errors[i] = f"pair {i} ({row.imgA} -> {row.imgB}): {reasons[0]}"
    return InMemoryPairs(source, images, maps, errors)


def rank_order(n: int, rank: int, world: int, seed: int, epoch: int) -> list[int]:
    """This rank's share of a seeded shuffle of range(n) for `epoch` (DistributedSampler:
    disjoint shards, padded to equal length so every rank takes the same number of steps)."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def _keep(item):
    return item


class BatchStream:
    """Endless full batches of loadable pairs for one rank. Bad pairs are skipped and
    counted. `cursor` = (epoch, items consumed in it) restarts the stream exactly where a
    checkpoint left it; items are read in `loader_workers` DataLoader processes (0: in
    this process) and batched by the dataset's `collate`."""

    def __init__(
        self,
        dataset: PairImages | InMemoryPairs,
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        loader_workers: int = 0,
        cursor: tuple[int, int] = (0, 0),
    ):
        self.dataset = dataset
        self.batch_size = batch_size
        self.rank, self.world, self.seed = rank, world, seed
        self.loader_workers = loader_workers
        self.cursor = tuple(cursor)
        self.skipped = 0
        self.reasons: list[str] = []
        self._items = self._item_stream()

    def _item_stream(self):
        from torch.utils.data import DataLoader

        epoch, offset = self.cursor
        while True:
            order = rank_order(len(self.dataset), self.rank, self.world, self.seed, epoch)
            if self.loader_workers:
                items = DataLoader(
                    self.dataset,
                    sampler=order[offset:],
                    batch_size=None,
                    collate_fn=_keep,
                    num_workers=self.loader_workers,
                )
            else:
                items = (self.dataset[i] for i in order[offset:])
            good = 0
            for item in items:
                offset += 1
                self.cursor = (epoch, offset)
                if isinstance(item, str):
                    self.skipped += 1
                    self.reasons.append(item)
                    continue
                good += 1
                yield item
            if good == 0 and offset == len(order):
                raise DataError(
                    f"rank {self.rank}: none of its {len(order)} training pairs could be "
                    f"loaded in epoch {epoch}; first reason: {self.reasons[0]}"
                )
            epoch, offset = epoch + 1, 0

    def next_batch(self):
        return self.dataset.collate([next(self._items) for _ in range(self.batch_size)])
