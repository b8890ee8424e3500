"""Train stage: NetG/NetD with the published objective on Ray Train (DDP over
`train.num_workers`), official-name checkpoints, resumable state, a loss log and sample grids.
The data, the step, the checkpoint files and the worker loop are pipeline/training/; this is
the driver and the stage declaration (its command: cli/train.py)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.cluster.runtime import init_ray
from pipeline.cluster.stage_result import StageResult
from pipeline.core import storage
from pipeline.core.atomic_io import write_bytes_atomic
from pipeline.core.config import Config, TrainConfig
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.layout import DatasetLayout, OutputLayout, TrainLayout
from pipeline.training.checkpoints import (
    InitCheckpoints,
    check_init_checkpoints,
    resolve_init_checkpoints,
)
from pipeline.training.data import load_train_pairs, training_size
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
from pipeline.training.step import LOSS_NAMES, resolve_vgg_weights
from pipeline.training.worker import train_loop_per_worker
from stages.spec import DATASET_ROOT, OUTPUT_ROOT, RAY_KEYS, STORAGE_KEYS, StageSpec


def write_meta(layout: TrainLayout, meta: dict) -> None:
    write_bytes_atomic(layout.meta, json.dumps(meta, indent=2, default=str).encode())


@dataclass
class Start:
    """Where a run begins: iteration 0, a saved state (`resume_from`, --resume) or a
    netG/netD pair (`init`, --init-from) whose numbering it continues."""

    iteration: int = 0
    resume_from: Path | None = None
    init: InitCheckpoints | None = None
    finished: bool = False  # already trained to train.iterations: nothing to do


@dataclass
class Setup:
    """What the driver resolved before starting the workers."""

    root: str  # the dataset root, absolute
    pairs: int  # train pairs
    vgg_path: Path | None
    perceptual_note: str
    gpu: bool
    size: tuple[int, int] = (0, 0)  # the images' (H, W): read once run_meta.json is written
    map_files: bool = True  # posemaps.export: read the npz maps (else render them)


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
    layout = TrainLayout(out or OutputLayout(cfg.output.root).train)
    result = StageResult("train")
    root = storage.absolute(cfg.dataset.root)
    pairs, _ = load_train_pairs(root)
    result.rows_in = len(pairs)
    start = resolve_start(layout, cfg.train, resume, init_from, init_iter, result.notes)
    if start.finished:
        return result
    setup = prepare(cfg, root, pairs)
    meta = initial_meta(cfg, setup, start)
    write_meta(layout, meta)
    board = progress_board()
    setup.size = training_size(root, pairs)
    trainer = build_trainer(cfg.train, layout, setup, start, board)
    metrics = fit(trainer, board, start.iteration, cfg.train.iterations)
    finish(result, cfg.train, layout, setup, start.iteration, meta, metrics)
    return result


def resolve_start(
    layout: TrainLayout,
    tc: TrainConfig,
    resume: bool,
    init_from: str | os.PathLike | None,
    init_iter: int | None,
    notes: list[str],
) -> Start:
    """Fresh, resumed (the saved state with the highest iteration) or initialised from a
    checkpoint pair; a saved state wins over --init-from. Says which in `notes`."""
    start = Start()
    if resume:
        latest = layout.latest_state()
        if latest is None:
            notes.append(f"--resume: no saved state under {layout.ray_storage}; starting at 0")
        else:
            start.iteration, start.resume_from = latest
            if start.iteration >= tc.iterations:
                notes.append(
                    f"already trained to iteration {start.iteration} (train.iterations = "
                    f"{tc.iterations}); nothing to do"
                )
                start.finished = True
                return start
    if init_from is not None and start.resume_from is None:
        init = resolve_init_checkpoints(init_from, init_iter)
        check_init_checkpoints(init, tc)
        if init.iteration >= tc.iterations:
            raise DataError(
                f"--init-from starts at iteration {init.iteration}, but "
                f"train.iterations is {tc.iterations}: pass --iterations above "
                f"{init.iteration}"
            )
        start.iteration, start.init = init.iteration, init
        notes.append(
            f"initialised from {init.netG.name} and {init.netD.name}, numbering "
            f"continues from {init.iteration}; Adam state starts fresh"
        )
    elif init_from is not None:
        notes.append(
            f"--init-from ignored: resuming the saved state at iteration {start.iteration}"
        )
    return start


def prepare(cfg: Config, root: str, pairs) -> Setup:
    """The perceptual term's weights, Ray, and a check that the cluster can place the
    workers (Ray Train would wait and retry for minutes for workers it cannot place)."""
    vgg_path, perceptual_note = resolve_vgg_weights(cfg)
    init_ray(cfg.ray)
    problem = check_train_resources(cfg, ClusterResources.from_ray())
    if problem:
        raise ConfigError(problem)
    gpu = use_gpu_for(cfg.train)
    return Setup(root, len(pairs), vgg_path, perceptual_note, gpu,
                 map_files=cfg.posemaps.export)  # fmt: skip


def initial_meta(cfg: Config, setup: Setup, start: Start) -> dict:
    """run_meta.json while the run is under way; `finish` completes it."""
    return {
        "config": cfg.to_dict(),
        "config_hash": cfg.hash(),
        "dataset_root": setup.root,
        "train_pairs": setup.pairs,
        "perceptual_used": setup.vgg_path is not None,
        "perceptual": setup.perceptual_note,
        "vgg_weights": str(setup.vgg_path) if setup.vgg_path else None,
        "num_workers": cfg.train.num_workers,
        "use_gpu": setup.gpu,
        "resumed_from": start.iteration if start.resume_from else 0,
        "init_from": start.init.record() if start.init else None,
        "status": "running",
        "started": time.time(),
    }


def build_trainer(tc: TrainConfig, layout: TrainLayout, setup: Setup, start: Start, board):
    """The TorchTrainer: train.num_workers workers (NCCL on GPUs, else gloo), each handed
    the train_loop_config train_loop_per_worker reads; Ray keeps the last two states."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cpus = cpus_per_worker(tc, setup.gpu)
    init = start.init
    # Ray Train keeps the resumable states on the output root's filesystem (S3 too).
    ray_storage = storage.resolve(layout.ray_storage)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train": tc.model_dump(),
            "out": str(layout.root),
            "root": setup.root,
            "size": setup.size,
            "map_files": setup.map_files,
            "loader_workers": loader_workers_for(tc, cpus),
            "vgg_weights": str(setup.vgg_path) if setup.vgg_path else None,
            "resume_from": str(start.resume_from) if start.resume_from else None,
            "progress": board,
            "init": {"netG": str(init.netG), "netD": str(init.netD), "iteration": init.iteration}
            if init
            else None,
        },
        torch_config=TorchConfig(backend="nccl" if setup.gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=tc.num_workers,
            use_gpu=setup.gpu,
            resources_per_worker={"CPU": cpus},
        ),
        run_config=RunConfig(
            name=f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=ray_storage.path,
            storage_filesystem=None if ray_storage.is_local else ray_storage.fs,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )


def fit(trainer, board, start: int, iterations: int) -> dict:
    """Run the trainer under the driver's progress bar; the last reported metrics. A
    worker's failure on its input data is raised as that error, not Ray's wrapper."""
    from ray.train import TrainingFailedError

    done = threading.Event()
    progress = threading.Thread(
        target=show_progress, args=(board, start, iterations, done), daemon=True
    )
    progress.start()
    # Ray Train installs its own SIGINT handler for the run and never puts the old one
    # back: a later Ctrl-C (or the stall watchdog) in the same process would call it and
    # exit 0 on the finished run's gone controller, instead of stopping the stage.
    on_sigint = signal.getsignal(signal.SIGINT)
    try:
        result = trainer.fit()
    except TrainingFailedError as exc:
        error = worker_input_error(exc)
        if error is None:
            raise
        raise error from exc
    finally:
        done.set()
        progress.join()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, on_sigint)
    return result.metrics or {}


def finish(
    result: StageResult,
    tc: TrainConfig,
    layout: TrainLayout,
    setup: Setup,
    start: int,
    meta: dict,
    metrics: dict,
) -> None:
    """The outputs, the finished run_meta.json (with the quality check on test pairs when
    train.quality_pairs asks for it) and the run's notes."""
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

        meta["test_quality"] = training_quality(
            setup.root, tc, final, setup.size, tc.quality_pairs, setup.map_files
        )
        if meta["test_quality"]:
            result.notes.append(quality_line(meta["test_quality"]))
    write_meta(layout, meta)
    result.notes.append(
        f"iterations {start + 1}..{tc.iterations} on {tc.num_workers} worker(s) "
        f"({'GPU' if setup.gpu else 'CPU'}); perceptual term {setup.perceptual_note}"
    )
    if result.skipped:
        result.notes.append(
            f"{result.skipped} pair loads failed and were skipped (see the worker log)"
        )


def _train_needed(cfg: Config) -> str | None:
    """Needed unless generate.checkpoints names only checkpoints from elsewhere (the demo
    names the shipped one and this run's folder: it still trains)."""
    own = OutputLayout(cfg.output.root).checkpoints.resolve()
    refs = [Path(c).resolve() for c in cfg.generate.checkpoints]
    if refs and not any(r == own or own in r.parents for r in refs):
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
        "posemaps.export": "whether maps are read from the npz files or rendered from the "
        "keypoints rows they hold: the same maps; the one read is the input",
    },
    inputs=lambda cfg: [
        DatasetLayout(cfg.dataset.root).pairs_table,
        # The maps, or with posemaps.export off the keypoints rows they are rendered from.
        DatasetLayout(cfg.dataset.root).posemap_dir("train")
        if cfg.posemaps.export
        else DatasetLayout(cfg.dataset.root).keypoints_table,
    ],
    outputs=lambda cfg: [OutputLayout(cfg.output.root).checkpoints],
    previous=lambda cfg: [OutputLayout(cfg.output.root).train],
    needed=_train_needed,
    guarded=True,
    progress=_more_iterations,
    record=lambda cfg: {"iterations": cfg.train.iterations},
)
