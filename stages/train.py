"""Train stage: NetG/NetD with the published objective on Ray Train (DDP over
`train.num_workers`), official-name checkpoints, resumable state, a loss log and sample grids."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.config import Config, ConfigError, TrainConfig
from pipeline.layout import DatasetLayout, OutputLayout, TrainLayout
from pipeline.runtime import StageResult, available_gpus, init_ray
from pipeline.tables import (
    DataError,
    atomic_path,
    read_table,
    safe_path,
    write_bytes_atomic,
    write_table,
)
from stages.spec import StageSpec

log = logging.getLogger(__name__)

LOSS_NAMES = ("g_total", "g_l1", "g_gan", "g_perceptual", "d_total", "d_real", "d_fake")
TRAIN_LOG_SCHEMA = pa.schema(
    [("iteration", pa.int64())]
    + [(name, pa.float64()) for name in LOSS_NAMES]
    + [("seconds", pa.float64())]  # wall time of the iteration on rank 0
)
SAMPLE_ROWS = 4


# --- data: pairs -> (condition, target, map pair) ---------------------------------------


class PairImages:
    """Map-style dataset over the train pairs: item i is (A, B, maps) as float tensors
    (A, B in [-1, 1], maps = concat(mapA, mapB) channels-first), or a string saying why
    the pair could not be loaded. Pose maps come from the npz files when present, else
    are rendered from the keypoints table."""

    def __init__(
        self,
        root: str | os.PathLike,
        pairs: pd.DataFrame,
        keypoints: pd.DataFrame | None,
        size: tuple[int, int],
    ):
        self.root = Path(root)
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
        self.size = size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        row = self.pairs.iloc[i]
        try:
            return self._load(row)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            return f"pair {i} ({row['imgA']} -> {row['imgB']}): {exc}"

    def _image(self, rel: str):
        from pipeline.imaging import load_rgb, to_tensor

        im = load_rgb(safe_path(self.root, rel))
        if (im.height, im.width) != self.size:
            raise DataError(
                f"{rel} is {im.height}x{im.width}, training size is {self.size[0]}x{self.size[1]}"
            )
        return to_tensor(im)

    def _map(self, split: str, fid: str) -> np.ndarray:
        from pipeline.posemap import load_posemap, render_map

        path = self.layout.posemap(split, fid)
        if path.is_file():
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

        split = row["split"]
        maps = np.concatenate(
            [self._map(split, row["fidA"]), self._map(split, row["fidB"])], axis=2
        )
        maps = torch.from_numpy(np.ascontiguousarray(maps.transpose(2, 0, 1))).float()
        return self._image(row["imgA"]), self._image(row["imgB"]), maps


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
    checkpoint left it; decoding runs in `loader_workers` DataLoader processes."""

    def __init__(
        self,
        dataset: PairImages,
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
            loader = DataLoader(
                self.dataset,
                sampler=order[offset:],
                batch_size=None,
                collate_fn=_keep,
                num_workers=self.loader_workers,
            )
            good = 0
            for item in loader:
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
        import torch

        items = [next(self._items) for _ in range(self.batch_size)]
        return tuple(torch.stack(parts) for parts in zip(*items, strict=True))


def load_train_pairs(root: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The train rows of the pairs table and the keypoints table (None when absent, then
    every pose map must exist as npz)."""
    from pipeline.tables import KEYPOINTS_SCHEMA, PAIRS_SCHEMA

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
    from pipeline.imaging import ImageError, load_rgb

    for rel in pairs["imgA"].head(50):
        try:
            im = load_rgb(safe_path(root, rel))
        except (ImageError, DataError):
            continue
        if im.height % 16 or im.width % 16:
            raise DataError(
                f"{rel}: NetG needs H and W divisible by 16, got {im.height}x{im.width}"
            )
        return im.height, im.width
    raise DataError(f"none of the first 50 train images under {root} could be read")


# --- networks, optimisers and one step ---------------------------------------------------


@dataclass
class Nets:
    """Generator, discriminator (possibly DDP-wrapped) and their Adam optimisers."""

    netG: Any
    netD: Any
    optG: Any
    optD: Any
    scaler: Any

    def plain(self, net) -> Any:
        """The unwrapped module: its state_dict has the official parameter names."""
        return getattr(net, "module", net)


def build_nets(tc: TrainConfig, device: str = "cpu") -> Nets:
    """Published init (seeded, so every rank starts identical) and Adam(lr, betas)."""
    import torch

    from pipeline.networks import build_discriminator, build_generator

    torch.manual_seed(tc.seed)
    netG = build_generator(tc.ngf).to(device)
    netD = build_discriminator(tc.ndf).to(device)
    betas = (tc.beta1, tc.beta2)
    return Nets(
        netG,
        netD,
        torch.optim.Adam(netG.parameters(), lr=tc.lr, betas=betas),
        torch.optim.Adam(netD.parameters(), lr=tc.lr, betas=betas),
        torch.amp.GradScaler(device, enabled=tc.autocast == "fp16"),
    )


def autocast_for(tc: TrainConfig, device: str):
    import torch

    from pipeline.api import AUTOCAST_DTYPES

    dtype = AUTOCAST_DTYPES[tc.autocast]
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None)


def train_step(nets: Nets, batch, weights, perceptual, amp) -> dict[str, Any]:
    """One published iteration: generate, update D on (A, B) vs (A, fake), then update G.
    Returns the loss tensors (detached)."""
    import torch

    from pipeline.losses import discriminator_loss, generator_loss

    a, b, maps = batch
    with amp:
        fake = nets.netG(a, maps)
        d_real = nets.netD(torch.cat([a, b], 1))
        d_fake = nets.netD(torch.cat([a, fake.detach()], 1))
    d_parts = discriminator_loss(d_real.float(), d_fake.float())
    nets.optD.zero_grad(set_to_none=True)
    nets.scaler.scale(d_parts["d_total"]).backward()
    nets.scaler.step(nets.optD)

    with amp:
        d_fake_for_g = nets.netD(torch.cat([a, fake], 1))
    g_parts = generator_loss(fake.float(), b, d_fake_for_g.float(), weights, perceptual)
    nets.optG.zero_grad(set_to_none=True)
    nets.scaler.scale(g_parts["g_total"]).backward()
    nets.scaler.step(nets.optG)
    nets.scaler.update()
    return {k: v.detach() for k, v in {**d_parts, **g_parts}.items()}


def loss_weights(tc: TrainConfig):
    from pipeline.losses import LossWeights

    return LossWeights(l1=tc.lambda_l1, gan=tc.lambda_gan, perceptual=tc.lambda_perceptual)


def resolve_vgg_weights(cfg: Config) -> tuple[Path | None, str]:
    """The VGG19 file for the perceptual term, or None with the reason it is off.
    `auto` without weights warns once and trains without it; `required` raises."""
    from pipeline.weights import WeightsError, require_weight

    tc = cfg.train
    if tc.perceptual == "off" or tc.lambda_perceptual == 0:
        return None, "off by config"
    try:
        if tc.vgg_weights:
            path = Path(tc.vgg_weights)
            if not path.is_file():
                raise WeightsError(
                    f"train.vgg_weights: {path} not found; give the path of "
                    "vgg19-dcbb9e9d.pth or leave it empty to search the torch cache"
                )
            return path, "used"
        return require_weight("vgg19", cfg.weights.dir), "used"
    except WeightsError as exc:
        if tc.perceptual == "required":
            raise
        log.warning("training WITHOUT the perceptual term (train.perceptual: auto): %s", exc)
        return None, f"skipped: {exc}"


# --- checkpoints, log and samples (rank 0) -------------------------------------------------


def save_state_dict(state: dict, path: Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def save_sample_grid(nets: Nets, samples, path: Path) -> None:
    """condition | target | generated, one row per sample pair, G in eval mode."""
    import torch
    from PIL import Image

    from pipeline.drawing import grid
    from pipeline.imaging import to_uint8

    netG = nets.plain(nets.netG)
    a, b, maps = samples
    netG.eval()
    with torch.no_grad():
        fake = netG(a, maps)
    netG.train()
    rows = [[Image.fromarray(im) for im in to_uint8(t)] for t in (a, b, fake)]
    png = grid([list(r) for r in zip(*rows, strict=True)])
    with atomic_path(path) as tmp:
        png.save(tmp, format="PNG")


def write_log(rows: list[dict], layout: TrainLayout, start: int) -> None:
    """Previous runs' rows before `start` (a resumed run) plus this run's rows."""
    frames = []
    if start > 0 and layout.log.exists():
        old = read_table(layout.log, TRAIN_LOG_SCHEMA)
        frames.append(old[old["iteration"] <= start])
    frames.append(pd.DataFrame(rows, columns=TRAIN_LOG_SCHEMA.names))
    write_table(pd.concat(frames, ignore_index=True), layout.log, TRAIN_LOG_SCHEMA)


def save_checkpoints(
    nets: Nets,
    layout: TrainLayout,
    it: int,
    rows: list[dict],
    start: int,
    progress: dict,
    metrics: dict,
) -> None:
    """Rank 0: the official-name state dicts, the log so far, and the resumable state
    (networks, optimisers, data cursors, RNG) reported as a Ray Train checkpoint."""
    import tempfile

    import ray.train
    import torch

    netG, netD = nets.plain(nets.netG).state_dict(), nets.plain(nets.netD).state_dict()
    save_state_dict(netG, layout.net_checkpoint("netG", it))
    save_state_dict(netD, layout.net_checkpoint("netD", it))
    write_log(rows, layout, start)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(
            {
                **progress,
                "netG": netG,
                "netD": netD,
                "optG": nets.optG.state_dict(),
                "optD": nets.optD.state_dict(),
                "scaler": nets.scaler.state_dict(),
            },
            Path(tmp) / TrainLayout.STATE_FILE,
        )
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"{TrainLayout.STATE_DIR_PREFIX}{it:09d}",
        )


# --- fine-tuning from a published-style checkpoint pair -----------------------------------

NET_CHECKPOINT_RE = re.compile(r"^net([GD])_(\d+)\.pth$")


@dataclass(frozen=True)
class InitCheckpoints:
    """The netG/netD pair a run starts from, and the iteration its numbering continues from."""

    netG: Path
    netD: Path
    iteration: int


def resolve_init_checkpoints(
    ref: str | os.PathLike, iteration: int | None = None
) -> InitCheckpoints:
    """`ref` a directory: its highest netG_<iter>.pth that has a netD_<iter>.pth beside it;
    a file: netG_<N>.pth or netD_<N>.pth and its sibling of the same N. `iteration`
    overrides N. Raises WeightsError naming what is missing."""
    from pipeline.weights import WeightsError

    path = Path(ref)
    if path.is_dir():
        pairs = sorted(
            (int(m.group(2)), m.group(2))
            for p in path.iterdir()
            if (m := NET_CHECKPOINT_RE.match(p.name))
            and m.group(1) == "G"
            and (path / f"netD_{m.group(2)}.pth").is_file()
        )
        if not pairs:
            raise WeightsError(
                f"--init-from {path}: no netG_<iter>.pth with a netD_<iter>.pth of "
                "the same iteration in this directory"
            )
        number, digits = pairs[-1]
    elif path.is_file():
        m = NET_CHECKPOINT_RE.match(path.name)
        if not m:
            raise WeightsError(
                f"--init-from {path}: expected a file named netG_<iter>.pth or "
                "netD_<iter>.pth (its pair is found by the iteration), or a "
                "directory"
            )
        number, digits = int(m.group(2)), m.group(2)
    else:
        raise WeightsError(f"--init-from {path}: no such file or directory")
    folder = path if path.is_dir() else path.parent
    found = InitCheckpoints(
        folder / f"netG_{digits}.pth",
        folder / f"netD_{digits}.pth",
        number if iteration is None else iteration,
    )
    for net in (found.netG, found.netD):
        if not net.is_file():
            raise WeightsError(
                f"--init-from {path}: {net} not found; training starts from both nets"
            )
    return found


def check_init_checkpoints(init: InitCheckpoints, tc: TrainConfig) -> None:
    """Fail before any worker starts when a file is not a NetG(ngf) / NetD(ndf) state dict."""
    from pipeline.api import check_checkpoint
    from pipeline.networks import build_discriminator
    from pipeline.weights import load_into

    check_checkpoint(init.netG, tc.ngf)
    load_into(build_discriminator(tc.ndf), init.netD)


def load_init_checkpoints(nets: Nets, init: dict) -> int:
    """Both nets from the pair (weights_only); the iteration the run continues from. Adam
    state stays fresh: published checkpoint files hold none."""
    from pipeline.weights import load_into

    load_into(nets.netG, init["netG"])
    load_into(nets.netD, init["netD"])
    return int(init["iteration"])


# --- the Ray Train worker loop ---------------------------------------------------------------


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train.torch import get_device
    from torch.nn.parallel import DistributedDataParallel

    from pipeline.losses import PerceptualLoss, vgg19_features

    tc = TrainConfig(**config["train"])
    layout = TrainLayout(config["out"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = get_device()
    dev = device.type

    nets = build_nets(tc, str(device))
    start, cursors, skipped_before = 0, [(0, 0)] * world, 0
    checkpoint = ray.train.get_checkpoint()
    state_dir = checkpoint.path if checkpoint else config.get("resume_from")
    if state_dir:
        state = torch.load(
            Path(state_dir) / TrainLayout.STATE_FILE, map_location=device, weights_only=True
        )
        if state["world"] != world:
            raise RuntimeError(
                f"{state_dir} was saved by {state['world']} workers; resume with "
                f"--num-workers {state['world']} (this run has {world})"
            )
        nets.netG.load_state_dict(state["netG"])
        nets.netD.load_state_dict(state["netD"])
        nets.optG.load_state_dict(state["optG"])
        nets.optD.load_state_dict(state["optD"])
        nets.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"].cpu())
        start, cursors, skipped_before = state["iteration"], state["cursors"], state["skipped"]
    elif config.get("init"):
        start = load_init_checkpoints(nets, config["init"])
    ids = [device.index] if dev == "cuda" else None
    nets.netG = DistributedDataParallel(nets.netG, device_ids=ids)
    nets.netD = DistributedDataParallel(nets.netD, device_ids=ids)

    perceptual = None
    if config["vgg_weights"]:
        perceptual = PerceptualLoss(vgg19_features(config["vgg_weights"])).to(device)
    weights = loss_weights(tc)
    amp = autocast_for(tc, dev)

    pairs, keypoints = load_train_pairs(config["root"])
    dataset = PairImages(config["root"], pairs, keypoints, tuple(config["size"]))
    stream = BatchStream(
        dataset, tc.batch_size, rank, world, tc.seed, tc.loader_workers, cursors[rank]
    )
    samples = None
    if rank == 0:
        # Spread over the table (it is sorted by identity) so rows show different people.
        spread = np.unique(np.linspace(0, len(dataset) - 1, 4 * SAMPLE_ROWS).astype(int))
        picked = [it for it in (dataset[int(i)] for i in spread) if not isinstance(it, str)][::4][
            :SAMPLE_ROWS
        ]
        samples = (
            tuple(torch.stack(p).to(device) for p in zip(*picked, strict=True)) if picked else None
        )
    board = config.get("progress")

    rows: list[dict] = []
    for it in range(start + 1, tc.iterations + 1):
        t0 = time.perf_counter()
        batch = tuple(t.to(device, non_blocking=True) for t in stream.next_batch())
        losses = train_step(nets, batch, weights, perceptual, amp)
        # Log the mean over workers so the log describes the whole global batch.
        values = torch.stack(
            [losses.get(k, torch.tensor(float("nan"), device=device)).float() for k in LOSS_NAMES]
        )
        dist.all_reduce(values)
        values = (values / world).tolist()
        if rank == 0:
            rows.append(
                {
                    "iteration": it,
                    **dict(zip(LOSS_NAMES, values, strict=True)),
                    "seconds": time.perf_counter() - t0,
                }
            )
            if board is not None:
                board.update.remote(it)
            if samples is not None and (it % tc.sample_every == 0 or it == tc.iterations):
                save_sample_grid(nets, samples, layout.sample_grid(it))
        if it % tc.ckpt_every == 0 or it == tc.iterations:
            all_cursors = [None] * world
            dist.all_gather_object(all_cursors, stream.cursor)
            skipped = torch.tensor(stream.skipped, device=device)
            dist.all_reduce(skipped)
            skipped_total = skipped_before + int(skipped)
            metrics = {
                "iteration": it,
                "skipped": skipped_total,
                **{k: v for k, v in zip(LOSS_NAMES, values, strict=True) if not math.isnan(v)},
            }
            if rank == 0:
                save_checkpoints(
                    nets,
                    layout,
                    it,
                    rows,
                    start,
                    {
                        "iteration": it,
                        "world": world,
                        "cursors": [list(c) for c in all_cursors],
                        "skipped": skipped_total,
                        "rng": torch.get_rng_state(),
                    },
                    metrics,
                )
            else:
                ray.train.report(metrics, checkpoint=None)
    for reason in stream.reasons[:5]:
        log.warning("skipped %s", reason)


# --- driver ------------------------------------------------------------------------------


def _progress_board():
    import ray

    @ray.remote(num_cpus=0)
    class ProgressBoard:
        """Rank 0 posts its iteration; the driver's tqdm polls it."""

        def __init__(self):
            self.iteration = 0

        def update(self, iteration: int) -> None:
            self.iteration = iteration

        def get(self) -> int:
            return self.iteration

    return ProgressBoard.remote()


def _show_progress(board, start: int, total: int, done: threading.Event) -> None:
    import ray
    from tqdm import tqdm

    with tqdm(total=total, initial=start, desc="train", unit="it", mininterval=2) as bar:
        while not done.wait(2.0):
            bar.update(max(0, ray.get(board.get.remote()) - bar.n))
        bar.update(max(0, ray.get(board.get.remote()) - bar.n))


def use_gpu_for(tc: TrainConfig) -> bool:
    if tc.use_gpu == "auto":
        return available_gpus() > 0
    if tc.use_gpu == "yes" and available_gpus() == 0:
        raise ConfigError("train.use_gpu: yes, but the Ray cluster has no GPU; use auto or no")
    return tc.use_gpu == "yes"


def cpus_per_worker(tc: TrainConfig, gpu: bool) -> int:
    """CPU workers share the cluster's CPUs evenly (Ray sets each worker's torch threads
    to its CPU count); GPU workers keep one CPU each for feeding the GPU."""
    import ray

    if tc.cpus_per_worker is not None:
        return tc.cpus_per_worker
    if gpu:
        return 1
    from pipeline.runtime import largest_node_cpus

    # A worker fits on one node: never more CPUs than the largest node has.
    share = int(ray.cluster_resources().get("CPU", 1)) // tc.num_workers
    return max(1, min(share, largest_node_cpus()))


def write_meta(layout: TrainLayout, meta: dict) -> None:
    write_bytes_atomic(layout.meta, json.dumps(meta, indent=2, default=str).encode())


def run_train(
    cfg: Config,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    init_from: str | os.PathLike | None = None,
    init_iter: int | None = None,
) -> StageResult:
    """Train on the train pairs of `cfg.dataset.root`; outputs under `out` (O/train/).
    `init_from`: start from a netG/netD pair (resolve_init_checkpoints) and continue its
    numbering, unless `resume` finds a saved state (which continues that run)."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    tc = cfg.train
    layout = TrainLayout(out or OutputLayout(cfg.output.root).train)
    result = StageResult("train")
    root = str(Path(cfg.dataset.root).resolve())
    pairs, _ = load_train_pairs(root)
    result.rows_in = len(pairs)

    resume_from, start = None, 0
    if resume:
        latest = layout.latest_state()
        if latest is None:
            result.notes.append(
                f"--resume: no saved state under {layout.ray_storage}; starting at 0"
            )
        else:
            start, resume_from = latest
            if start >= tc.iterations:
                result.notes.append(
                    f"already trained to iteration {start} (train.iterations = "
                    f"{tc.iterations}); nothing to do"
                )
                return result
    init, init_record = None, None
    if init_from is not None and resume_from is None:
        from pipeline.weights import file_sha256

        init = resolve_init_checkpoints(init_from, init_iter)
        check_init_checkpoints(init, tc)
        if init.iteration >= tc.iterations:
            raise DataError(
                f"--init-from starts at iteration {init.iteration}, but "
                f"train.iterations is {tc.iterations}: pass --iterations above "
                f"{init.iteration}"
            )
        start = init.iteration
        init_record = {
            "iteration": init.iteration,
            "optimiser": "fresh Adam state: the checkpoint "
            "files hold no optimiser state (the published ones never do)",
            **{
                net: {"path": str(Path(p).resolve()), "sha256": file_sha256(p)}
                for net, p in (("netG", init.netG), ("netD", init.netD))
            },
        }
        result.notes.append(
            f"initialised from {init.netG.name} and {init.netD.name}, numbering "
            f"continues from {init.iteration}; Adam state starts fresh"
        )
    elif init_from is not None:
        result.notes.append(f"--init-from ignored: resuming the saved state at iteration {start}")

    vgg_path, perceptual_note = resolve_vgg_weights(cfg)
    init_ray(cfg.ray)
    gpu = use_gpu_for(tc)
    meta = {
        "config": cfg.to_dict(),
        "config_hash": cfg.hash(),
        "dataset_root": root,
        "train_pairs": len(pairs),
        "perceptual_used": vgg_path is not None,
        "perceptual": perceptual_note,
        "vgg_weights": str(vgg_path) if vgg_path else None,
        "num_workers": tc.num_workers,
        "use_gpu": gpu,
        "resumed_from": start if resume_from else 0,
        "init_from": init_record,
        "status": "running",
        "started": time.time(),
    }
    write_meta(layout, meta)
    board = _progress_board()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train": tc.model_dump(),
            "out": str(layout.root),
            "root": root,
            "size": training_size(root, pairs),
            "vgg_weights": str(vgg_path) if vgg_path else None,
            "resume_from": str(resume_from) if resume_from else None,
            "progress": board,
            "init": {"netG": str(init.netG), "netD": str(init.netD), "iteration": init.iteration}
            if init
            else None,
        },
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=tc.num_workers,
            use_gpu=gpu,
            resources_per_worker={"CPU": cpus_per_worker(tc, gpu)},
        ),
        run_config=RunConfig(
            name=f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=str(layout.ray_storage),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    done = threading.Event()
    progress = threading.Thread(
        target=_show_progress, args=(board, start, tc.iterations, done), daemon=True
    )
    progress.start()
    try:
        fit = trainer.fit()
    finally:
        done.set()
        progress.join()
    metrics = fit.metrics or {}
    result.skipped = int(metrics.get("skipped", 0))
    result.rows_out = tc.iterations - start
    final = layout.net_checkpoint("netG", tc.iterations)
    result.outputs = {
        "checkpoints": str(layout.checkpoints),
        "final_netG": str(final),
        "log": str(layout.log),
        "samples": str(layout.samples),
        "meta": str(layout.meta),
    }
    meta.update(
        status="finished",
        ended=time.time(),
        skipped_pairs=result.skipped,
        final_losses={k: metrics[k] for k in LOSS_NAMES if k in metrics},
    )
    write_meta(layout, meta)
    result.notes.append(
        f"iterations {start + 1}..{tc.iterations} on {tc.num_workers} worker(s) "
        f"({'GPU' if gpu else 'CPU'}); perceptual term {perceptual_note}"
    )
    if result.skipped:
        result.notes.append(
            f"{result.skipped} pair loads failed and were skipped (see the worker log)"
        )
    return result


def _train_needed(cfg: Config) -> str | None:
    if cfg.generate.checkpoints:
        return "generate.checkpoints names the checkpoints to use"
    return None


def _more_iterations(cfg: Config, record: dict) -> str | None:
    done = int(record.get("iterations", 0))
    if cfg.train.iterations > done:
        return f"train.iterations {done} -> {cfg.train.iterations}: continues from iteration {done}"
    return None


# What defines the weights: not the iteration count (raising it continues the run), nor
# workers, loader processes, checkpoint or sample periods.
STAGE = StageSpec(
    name="train",
    version=1,
    run=lambda cfg, fresh: run_train(cfg, resume=not fresh),
    config_keys=tuple(
        f"train.{k}"
        for k in (
            "ngf",
            "ndf",
            "batch_size",
            "lr",
            "beta1",
            "beta2",
            "lambda_l1",
            "lambda_gan",
            "lambda_perceptual",
            "perceptual",
            "vgg_weights",
            "autocast",
            "seed",
        )
    ),
    inputs=lambda cfg: [
        DatasetLayout(cfg.dataset.root).pairs_table,
        DatasetLayout(cfg.dataset.root).posemap_dir("train"),
    ],
    outputs=lambda cfg: [OutputLayout(cfg.output.root).checkpoints],
    previous=lambda cfg: [OutputLayout(cfg.output.root).train],
    needed=_train_needed,
    guarded=True,
    progress=_more_iterations,
    record=lambda cfg: {"iterations": cfg.train.iterations},
)


@click.command("train")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Output directory (default: <output.root>/train).",
)
@click.option("--ngf", type=int, default=None, help="Generator width (default: train.ngf).")
@click.option(
    "--iterations", type=int, default=None, help="Last iteration (default: train.iterations)."
)
@click.option(
    "--ckpt-every", type=int, default=None, help="Checkpoint period (default: train.ckpt_every)."
)
@click.option(
    "--num-workers", type=int, default=None, help="Ray Train workers (default: train.num_workers)."
)
@click.option("--resume", is_flag=True, help="Continue from the latest saved state under OUT.")
@click.option(
    "--init-from",
    type=click.Path(exists=True),
    default=None,
    metavar="DIR_OR_FILE",
    help="Start from a netG_<iter>.pth / netD_<iter>.pth pair (the official 257500 / "
    "260500 ones, or another run's): a file of the pair, or a directory (its "
    "highest complete pair). Numbering continues from <iter>; Adam starts fresh, "
    "since the files hold no optimiser state.",
)
@click.option(
    "--init-iter",
    type=int,
    default=None,
    help="The iteration --init-from's weights count as (default: from the file name).",
)
@click.pass_obj
def train_command(
    obj, out, ngf, iterations, ckpt_every, num_workers, resume, init_from, init_iter
) -> None:
    """Train NetG/NetD on the train pairs of dataset.root with Ray Train (DDP).

    \b
    Reads: <dataset.root>/tables/pairs.parquet (split == train), the images, the pose maps
           (<split>_pose_maps/<file_id>.npz, else rendered from tables/keypoints.parquet).
    Writes under OUT (default <output.root>/train):
      checkpoints/netG_<iter>.pth, netD_<iter>.pth   plain state dicts, official names
      log.parquet                                    losses per iteration
      samples/iter_<iter>.png                        condition | target | generated
      run_meta.json                                  config, perceptual term used or not,
                                                     --init-from files with their sha256
      ray/                                           Ray Train runs: resumable states
    Example: run_pipeline.py --config configs/demo.yaml train --iterations 600 --num-workers 2
    """
    from pipeline.config import config_from_dict
    from pipeline.runtime import run_stage

    if init_iter is not None and init_from is None:
        raise click.UsageError("--init-iter needs --init-from")
    overrides = {
        "ngf": ngf,
        "iterations": iterations,
        "ckpt_every": ckpt_every,
        "num_workers": num_workers,
    }
    data = obj.cfg.to_dict()
    data["train"].update({k: v for k, v in overrides.items() if v is not None})
    result = run_stage(
        "train",
        run_train,
        config_from_dict(data),
        out=out,
        resume=resume,
        init_from=init_from,
        init_iter=init_iter,
    )
    click.echo(result.summary())
