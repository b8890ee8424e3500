"""Train stage: NetG/NetD with the published objective on Ray Train (DDP over
`train.num_workers`), official-name checkpoints, resumable state, a loss log and sample grids.
The data, the step and the checkpoint files are pipeline/training/; this is the Ray Train
loop, the driver and the stage declaration (its command: cli/train.py)."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path

import numpy as np

from pipeline.cluster.runtime import init_ray
from pipeline.cluster.stage_result import StageResult
from pipeline.core.atomic_io import write_bytes_atomic
from pipeline.core.config import Config, TrainConfig
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.layout import DatasetLayout, OutputLayout, TrainLayout
from pipeline.training.board import TrainBoard
from pipeline.training.checkpoints import (
    check_init_checkpoints,
    load_init_checkpoints,
    load_train_state,
    resolve_init_checkpoints,
    save_checkpoints,
    save_sample_grid,
)
from pipeline.training.data import (
    BatchStream,
    PairImages,
    decode_in_memory,
    load_train_pairs,
    training_size,
)
from pipeline.training.driver import (
    cpus_per_worker,
    loader_workers_for,
    progress_board,
    show_progress,
    use_gpu_for,
    worker_input_error,
)
from pipeline.training.quality import quality_line
from pipeline.training.resources import ClusterResources, check_train_resources
from pipeline.training.step import (
    LOSS_NAMES,
    autocast_for,
    build_nets,
    loss_weights,
    resolve_vgg_weights,
    to_device,
    train_step,
)
from stages.spec import DATASET_ROOT, OUTPUT_ROOT, RAY_KEYS, STORAGE_KEYS, StageSpec

log = logging.getLogger(__name__)

SAMPLE_ROWS = 4


# --- the Ray Train worker loop ---------------------------------------------------------------


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train.torch import get_device
    from torch.nn.parallel import DistributedDataParallel

    from pipeline.training.losses import PerceptualLoss, vgg19_features

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
        start, cursors, skipped_before = load_train_state(nets, Path(state_dir), world, device)
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
    in_memory = decode_in_memory(dataset, tc.memory_mb * 2**20) if tc.memory_mb else None
    loader_workers = 0 if in_memory is not None else config["loader_workers"]
    dataset = dataset if in_memory is None else in_memory
    stream = BatchStream(
        dataset, tc.batch_size, rank, world, tc.seed, loader_workers, cursors[rank]
    )
    samples = None
    if rank == 0:
        # Spread over the table (it is sorted by identity) so rows show different people.
        spread = np.unique(np.linspace(0, len(dataset) - 1, 4 * SAMPLE_ROWS).astype(int))
        picked = [it for it in (dataset[int(i)] for i in spread) if not isinstance(it, str)][::4][
            :SAMPLE_ROWS
        ]
        samples = to_device(dataset.collate(picked), device, tc) if picked else None
    board = config.get("progress")
    events = TrainBoard(layout.root) if rank == 0 else None

    rows: list[dict] = []
    for it in range(start + 1, tc.iterations + 1):
        t0 = time.perf_counter()
        batch = to_device(stream.next_batch(), device, tc)
        losses = train_step(nets, batch, weights, perceptual, amp)
        # Log the mean over workers so the log describes the whole global batch.
        values = torch.stack(
            [losses.get(k, torch.tensor(float("nan"), device=device)).float() for k in LOSS_NAMES]
        )
        dist.all_reduce(values)
        values = (values / world).tolist()
        if rank == 0:
            seconds = time.perf_counter() - t0
            rows.append(
                {"iteration": it, **dict(zip(LOSS_NAMES, values, strict=True)), "seconds": seconds}
            )
            events.step(
                it, dict(zip(LOSS_NAMES, values, strict=True)), nets.optG.param_groups[0]["lr"],
                seconds,
            )  # fmt: skip
            if board is not None:
                board.update.remote(it)
            if samples is not None and (it % tc.sample_every == 0 or it == tc.iterations):
                save_sample_grid(nets, samples, layout.sample_grid(it))
                events.samples(it, layout.sample_grid(it))
        if it % tc.ckpt_every == 0 or it == tc.iterations:
            all_cursors = [None] * world
            dist.all_gather_object(all_cursors, stream.cursor)
            skipped = torch.tensor(stream.skipped, device=device)
            dist.all_reduce(skipped)
            skipped_total = skipped_before + int(skipped)
            metrics = {
                "iteration": it,
                "skipped": skipped_total,
                "in_memory": int(in_memory is not None),
                **{k: v for k, v in zip(LOSS_NAMES, values, strict=True) if not math.isnan(v)},
            }
            if rank == 0:
                events.flush()
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
    if events is not None:
        events.close()
    for reason in stream.reasons[:5]:
        log.warning("skipped %s", reason)


# --- driver ------------------------------------------------------------------------------


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
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig, TrainingFailedError
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
        init = resolve_init_checkpoints(init_from, init_iter)
        check_init_checkpoints(init, tc)
        if init.iteration >= tc.iterations:
            raise DataError(
                f"--init-from starts at iteration {init.iteration}, but "
                f"train.iterations is {tc.iterations}: pass --iterations above "
                f"{init.iteration}"
            )
        start = init.iteration
        init_record = init.record()
        result.notes.append(
            f"initialised from {init.netG.name} and {init.netD.name}, numbering "
            f"continues from {init.iteration}; Adam state starts fresh"
        )
    elif init_from is not None:
        result.notes.append(f"--init-from ignored: resuming the saved state at iteration {start}")

    vgg_path, perceptual_note = resolve_vgg_weights(cfg)
    init_ray(cfg.ray)
    # Ray Train would wait and retry for minutes for workers that cannot be placed.
    problem = check_train_resources(cfg, ClusterResources.from_ray())
    if problem:
        raise ConfigError(problem)
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
    board = progress_board()
    cpus = cpus_per_worker(tc, gpu)
    size = training_size(root, pairs)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train": tc.model_dump(),
            "out": str(layout.root),
            "root": root,
            "size": size,
            "loader_workers": loader_workers_for(tc, cpus),
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
            resources_per_worker={"CPU": cpus},
        ),
        run_config=RunConfig(
            name=f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=str(layout.ray_storage),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    done = threading.Event()
    progress = threading.Thread(
        target=show_progress, args=(board, start, tc.iterations, done), daemon=True
    )
    progress.start()
    try:
        fit = trainer.fit()
    except TrainingFailedError as exc:
        error = worker_input_error(exc)
        if error is None:
            raise
        raise error from exc
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
        data="decoded once into memory" if metrics.get("in_memory") else "decoded per item",
    )
    if tc.quality_pairs and final.is_file():
        from pipeline.training.quality import training_quality

        meta["test_quality"] = training_quality(root, tc, final, size, tc.quality_pairs)
        if meta["test_quality"]:
            result.notes.append(quality_line(meta["test_quality"]))
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
    does=lambda cfg: (
        f"train NetG (ngf {cfg.train.ngf}) against NetD (ndf {cfg.train.ndf}) "
        f"up to iteration {cfg.train.iterations} in batches of {cfg.train.batch_size} on "
        f"{cfg.train.num_workers} worker(s), a checkpoint every {cfg.train.ckpt_every}; "
        "time left is printed after the first iterations"
    ),
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
    ignored_keys={
        **STORAGE_KEYS,
        **RAY_KEYS,
        **DATASET_ROOT,
        **OUTPUT_ROOT,
        "weights.dir": "where the VGG weights train.vgg_weights names are looked up",
        "train.iterations": "where training stops: raising it continues the run (progress)",
        "train.ckpt_every": "which iterations are saved, not what training computes",
        "train.sample_every": "how often sample grids are drawn",
        "train.quality_pairs": "test pairs of the check after training: a note on the run",
        "train.num_workers": "Ray Train workers: how the work is spread",
        "train.cpus_per_worker": "CPUs and torch threads per worker: scheduling only",
        "train.loader_workers": "processes decoding pairs: scheduling only",
        "train.memory_mb": "whether pairs are decoded once into memory or on every use",
        "train.use_gpu": "the device: scheduling only",
        "train.channels_last": "the memory format of nets and batches: same arithmetic",
    },
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
