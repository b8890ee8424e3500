"""The Ray Train worker loop of the train stage (stages/train.py hands it to TorchTrainer):
each worker restores or initialises NetG/NetD under DDP, streams its share of the train
pairs and steps; rank 0 logs the losses, draws sample grids and saves the checkpoints."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np

from pipeline.core.config import TrainConfig
from pipeline.core.layout import TrainLayout
from pipeline.core.object_path import data_path
from pipeline.training.board import TrainBoard
from pipeline.training.checkpoints import (
    load_init_checkpoints,
    load_train_state,
    save_checkpoints,
    save_sample_grid,
)
from pipeline.training.data import BatchStream, PairImages, decode_in_memory, load_train_pairs
from pipeline.training.step import (
    LOSS_NAMES,
    autocast_for,
    build_nets,
    loss_weights,
    to_device,
    train_step,
)

log = logging.getLogger(__name__)

SAMPLE_ROWS = 4


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: `config` is the driver's train_loop_config."""
    WorkerLoop(config).run()


class WorkerLoop:
    """One worker's nets, data and (rank 0) logs, set up once, then its iterations. Every
    worker steps and checkpoints in lockstep: DDP and the all-reduces wait for all of them."""

    tc: TrainConfig

    def __init__(self, config: dict):
        import ray.train
        from ray.train.torch import get_device

        self.tc = TrainConfig(**config["train"])
        self.layout = TrainLayout(config["out"])
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = get_device()
        cursors = self._restore_nets(config)
        self._objective(config)
        dataset = self._data(config, cursors[self.rank])
        self.samples = self._sample_batch(dataset) if self.rank == 0 else None
        self.board = config.get("progress")
        self.events = TrainBoard(self.layout.root) if self.rank == 0 else None
        self.rows: list[dict] = []

    def _restore_nets(self, config: dict) -> list:
        """Build the nets and load where this run starts: Ray's checkpoint (a restarted
        worker), the saved state (--resume) or a netG/netD pair (--init-from); then wrap them
        in DDP. Returns every rank's data cursor."""
        import ray.train
        from torch.nn.parallel import DistributedDataParallel

        self.nets = build_nets(self.tc, str(self.device))
        self.start, cursors, self.skipped_before = 0, [(0, 0)] * self.world, 0
        checkpoint = ray.train.get_checkpoint()
        if checkpoint:  # a restarted worker: Ray's copy, fetched from wherever it is kept
            with checkpoint.as_directory() as state_dir:
                self.start, cursors, self.skipped_before = load_train_state(
                    self.nets, Path(state_dir), self.world, self.device
                )
        elif state_dir := config.get("resume_from"):
            self.start, cursors, self.skipped_before = load_train_state(
                self.nets, data_path(state_dir), self.world, self.device
            )
        elif config.get("init"):
            self.start = load_init_checkpoints(self.nets, config["init"])
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.nets.netG = DistributedDataParallel(self.nets.netG, device_ids=ids)
        self.nets.netD = DistributedDataParallel(self.nets.netD, device_ids=ids)
        return cursors

    def _objective(self, config: dict) -> None:
        """The loss weights, the perceptual term (when its VGG weights were found) and the
        autocast context."""
        from pipeline.training.losses import PerceptualLoss, vgg19_features

        self.perceptual = None
        if config["vgg_weights"]:
            self.perceptual = PerceptualLoss(vgg19_features(config["vgg_weights"])).to(self.device)
        self.weights = loss_weights(self.tc)
        self.amp = autocast_for(self.tc, self.device.type)

    def _data(self, config: dict, cursor) -> PairImages:
        """The train pairs, decoded once into memory when train.memory_mb allows (then
        without loader processes), and this rank's stream of batches from `cursor` on."""
        tc = self.tc
        pairs, keypoints = load_train_pairs(config["root"])
        dataset = PairImages(
            config["root"], pairs, keypoints, tuple(config["size"]), config["map_files"]
        )
        in_memory = decode_in_memory(dataset, tc.memory_mb * 2**20) if tc.memory_mb else None
        loader_workers = 0 if in_memory is not None else config["loader_workers"]
        dataset = dataset if in_memory is None else in_memory
        self.in_memory = in_memory is not None
        self.stream = BatchStream(
            dataset, tc.batch_size, self.rank, self.world, tc.seed, loader_workers, cursor
        )
        return dataset

    def _sample_batch(self, dataset):
        """The fixed batch of the sample grids."""
        # Spread over the table (it is sorted by identity) so rows show different people.
        spread = np.unique(np.linspace(0, len(dataset) - 1, 4 * SAMPLE_ROWS).astype(int))
        picked = [it for it in (dataset[int(i)] for i in spread) if not isinstance(it, str)][::4][
            :SAMPLE_ROWS
        ]
        return to_device(dataset.collate(picked), self.device, self.tc) if picked else None

    def run(self) -> None:
        tc = self.tc
        for it in range(self.start + 1, tc.iterations + 1):
            t0 = time.perf_counter()
            values = self._step()
            if self.rank == 0:
                self._log(it, values, time.perf_counter() - t0)
            if it % tc.ckpt_every == 0 or it == tc.iterations:
                self._checkpoint(it, values)
        if self.events is not None:
            self.events.close()
        for reason in self.stream.reasons[:5]:
            log.warning("skipped %s", reason)

    def _step(self) -> list[float]:
        """One training step; the losses averaged over workers, so that the log describes
        the whole global batch (nan for a loss this step did not compute)."""
        import torch
        import torch.distributed as dist

        batch = to_device(self.stream.next_batch(), self.device, self.tc)
        losses = train_step(self.nets, batch, self.weights, self.perceptual, self.amp)
        nan = torch.tensor(float("nan"), device=self.device)
        values = torch.stack([losses.get(k, nan).float() for k in LOSS_NAMES])
        dist.all_reduce(values)
        return (values / self.world).tolist()

    def _log(self, it: int, values: list[float], seconds: float) -> None:
        """Rank 0: the loss log row, the TensorBoard events, the driver's progress bar and
        every train.sample_every iterations (and at the last) a sample grid."""
        tc = self.tc
        losses = dict(zip(LOSS_NAMES, values, strict=True))
        self.rows.append({"iteration": it, **losses, "seconds": seconds})
        self.events.step(it, losses, self.nets.optG.param_groups[0]["lr"], seconds)
        if self.board is not None:
            self.board.update.remote(it)
        if self.samples is not None and (it % tc.sample_every == 0 or it == tc.iterations):
            save_sample_grid(self.nets, self.samples, self.layout.sample_grid(it))
            self.events.samples(it, self.layout.sample_grid(it))

    def _checkpoint(self, it: int, values: list[float]) -> None:
        """Every worker hands in its data cursor and skip count; rank 0 saves the nets and
        the resumable state and reports to Ray Train, the others report without one."""
        import ray.train
        import torch
        import torch.distributed as dist

        all_cursors = [None] * self.world
        dist.all_gather_object(all_cursors, self.stream.cursor)
        skipped = torch.tensor(self.stream.skipped, device=self.device)
        dist.all_reduce(skipped)
        skipped_total = self.skipped_before + int(skipped)
        metrics = {
            "iteration": it,
            "skipped": skipped_total,
            "in_memory": int(self.in_memory),
            **{k: v for k, v in zip(LOSS_NAMES, values, strict=True) if not math.isnan(v)},
        }
        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        self.events.flush()
        state = {
            "iteration": it,
            "world": self.world,
            "cursors": [list(c) for c in all_cursors],
            "skipped": skipped_total,
            "rng": torch.get_rng_state(),
        }
        save_checkpoints(self.nets, self.layout, it, self.rows, self.start, state, metrics)
