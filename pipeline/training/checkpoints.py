"""Training outputs on disk: official-name state dicts (netG_<iter>.pth), the loss log,
sample grids, the resumable Ray Train state, and the netG/netD pair a run starts from."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipeline.config import TrainConfig
from pipeline.layout import TrainLayout
from pipeline.tables import atomic_path, read_table, write_table
from pipeline.training.step import LOSS_NAMES, Nets

TRAIN_LOG_SCHEMA = pa.schema(
    [("iteration", pa.int64())]
    + [(name, pa.float64()) for name in LOSS_NAMES]
    + [("seconds", pa.float64())]  # wall time of the iteration on rank 0
)


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

    # Contiguous copies: the files stay what the published code writes whatever memory
    # format trained them.
    netG, netD = (
        {k: v.contiguous() for k, v in nets.plain(net).state_dict().items()}
        for net in (nets.netG, nets.netD)
    )
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


def load_train_state(nets: Nets, state_dir: Path, world: int, device) -> tuple[int, list, int]:
    """Networks, optimisers and RNG from a saved state; (iteration, data cursors per rank,
    pairs skipped so far). The cursors are per rank, so the worker count must match."""
    import torch

    state = torch.load(state_dir / TrainLayout.STATE_FILE, map_location=device, weights_only=True)
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
    return state["iteration"], state["cursors"], state["skipped"]


NET_CHECKPOINT_RE = re.compile(r"^net([GD])_(\d+)\.pth$")


@dataclass(frozen=True)
class InitCheckpoints:
    """The netG/netD pair a run starts from, and the iteration its numbering continues from."""

    netG: Path
    netD: Path
    iteration: int

    def record(self) -> dict:
        """What run_meta.json keeps of the start: the files, their sha256, the iteration."""
        from pipeline.weights import file_sha256

        return {
            "iteration": self.iteration,
            "optimiser": "fresh Adam state: the checkpoint "
            "files hold no optimiser state (the published ones never do)",
            **{
                net: {"path": str(Path(p).resolve()), "sha256": file_sha256(p)}
                for net, p in (("netG", self.netG), ("netD", self.netD))
            },
        }


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
