"""Checks a `run` makes before any stage writes or moves anything: the dataset root, the
files the config names, the image lists the later stages need, and whether the cluster can
hold what training asks for. Each failure is a sentence naming the config key or file; all
of them are reported together."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.config import Config, dataset_path
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.legacy_csv import read_image_list
from pipeline.core.object_path import data_path


def preflight_problems(cfg: Config, selected: list[str]) -> list[str]:
    """What would make the planned stages fail later, as sentences (empty: go)."""
    root = data_path(cfg.dataset.root, cfg.storage)
    if not root.is_dir():
        return [
            f"dataset.root {cfg.dataset.root!r} is not a directory (resolved: {root.resolve()}); "
            "point dataset.root at a dataset tree, or build one with `synth --out DIR`"
        ]
    problems = []
    kc, gc = cfg.keypoints, cfg.generate
    if "keypoints" in selected:
        named = {"keypoints.annotations": kc.annotations, "keypoints.compare": kc.compare}
        for key, value in named.items():
            if value and not dataset_path(cfg, value).is_file():
                problems.append(
                    f"{key}: {dataset_path(cfg, value)} not found (relative paths of dataset "
                    "files resolve against dataset.root)"
                )
    if "generate" in selected:
        if gc.pairs and not dataset_path(cfg, gc.pairs).is_file():
            problems.append(f"generate.pairs: {dataset_path(cfg, gc.pairs)} not found")
        for ckpt in gc.checkpoints:
            if Path(ckpt).suffix == ".pth" and not data_path(ckpt, cfg.storage).is_file():
                problems.append(f"generate.checkpoints: {ckpt} not found")
    if "train" in selected and (problem := local_train_problem(cfg)):
        problems.append(problem)
    needs_test = {"pairs", "train", "generate"} & set(selected) and not gc.pairs
    test_list = root / cfg.dataset.test_list
    if needs_test and test_list.is_file():
        try:
            # Whether it lists any image; the stage that reads the paths checks them.
            empty = not read_image_list(test_list, root, checked=False)
        except DataError as exc:
            problems.append(str(exc))
        else:
            if empty:
                problems.append(
                    f"{test_list} lists no image: there would be no test pairs to generate and "
                    "score (dataset.test_list names the file)"
                )
    return problems


def local_train_problem(cfg: Config) -> str | None:
    """Whether a local Ray (no cluster address) could place the training workers, from the
    CPUs and GPUs it would start with: known without starting Ray. On a cluster the train
    stage checks the same right after joining it, before it writes."""
    import os

    from pipeline.training.resources import ClusterResources, check_train_resources
    from stages.train import STAGE as TRAIN

    # Not needed (generate.checkpoints names checkpoints from elsewhere): nothing to place,
    # and the GPU count below would import torch for nothing.
    if cfg.ray.address or os.environ.get("RAY_ADDRESS") or TRAIN.needed(cfg):
        return None
    cpus = cfg.ray.num_cpus or len(os.sched_getaffinity(0))
    gpus = cfg.ray.num_gpus
    if gpus is None:
        gpus = 0
        if cfg.train.use_gpu != "no":
            import torch

            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return check_train_resources(cfg, ClusterResources(((float(cpus), float(gpus)),)))


def preflight(cfg: Config, selected: list[str]) -> None:
    """Raise one ConfigError listing every problem found, before anything is written."""
    problems = preflight_problems(cfg, selected)
    if problems:
        raise ConfigError("nothing was started or written:\n  " + "\n  ".join(problems))


def location_problems(cfg: Config) -> list[str]:
    """Data locations given as URIs that cannot be used (an unknown scheme, a missing
    bucket, refused credentials, no server), each one paragraph naming the key, the URI
    and what to set."""
    from pipeline.core import storage

    named = [
        ("dataset.root", cfg.dataset.root),
        ("output.root", cfg.output.root),
        ("weights.dir", cfg.weights.dir),
        ("weights.checkpoint_dir", cfg.weights.checkpoint_dir),
        *(("generate.checkpoints", c) for c in cfg.generate.checkpoints),
    ]
    named = [(key, value) for key, value in named if value]
    return [p for k, v in named if (p := storage.location_problem(k, v, cfg.storage))]
