"""Training outputs on disk: official-name state dicts (netG_<iter>.pth), the loss log,
sample grids, the resumable Ray Train state, and the netG/netD pair a run starts from."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipeline.core.atomic_io import atomic_path, disk_full_error, read_table, write_table
from pipeline.core.config import TrainConfig
from pipeline.core.layout import TrainLayout
from pipeline.training.step import LOSS_NAMES, Nets

TRAIN_LOG_SCHEMA = pa.schema(
    [("iteration", pa.int64())]
    + [(name, pa.float64()) for name in LOSS_NAMES]
    + [("seconds", pa.float64())]  # wall time of the iteration on rank 0
)


def state_bytes(state) -> int:
    """The tensor bytes in a (nested) state: about what torch.save writes."""
    import torch

    if isinstance(state, torch.Tensor):
        return state.nelement() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


def save_state_dict(state: dict, path: Path) -> None:
    import torch

    # torch reports a full disk without an errno; the size lets atomic_path tell. Given a
    # path, torch's writer keeps the failed file open (its space held) until garbage
    # collected; a file object of ours is closed on the way out. It also names the
    # archive inside "archive/" rather than after the random temporary name.
    with atomic_path(path, needed=state_bytes(state)) as tmp, open(tmp, "wb") as fh:
        torch.save(state, fh)


def save_sample_grid(nets: Nets, samples, path: Path) -> None:
    """condition | target | generated, one row per sample pair, G in eval mode."""
    import torch
    from PIL import Image

    from pipeline.core.imaging import to_uint8
    from pipeline.pose.drawing import grid

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

    # Contiguous copies: the files stay what the published code writes whatever memory
    # format trained them.
    netG, netD = (
        {k: v.contiguous() for k, v in nets.plain(net).state_dict().items()}
        for net in (nets.netG, nets.netD)
    )
    save_state_dict(netG, layout.net_checkpoint("netG", it))
    save_state_dict(netD, layout.net_checkpoint("netD", it))
    write_log(rows, layout, start)
    state = {
        **progress,
        "netG": netG,
        "netD": netD,
        "optG": nets.optG.state_dict(),
        "optD": nets.optD.state_dict(),
        "scaler": nets.scaler.state_dict(),
    }
    needed = state_bytes(state)
    name = f"{TrainLayout.STATE_DIR_PREFIX}{it:09d}"
    with tempfile.TemporaryDirectory() as tmp:
        save_state_dict(state, Path(tmp) / TrainLayout.STATE_FILE)
        try:
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=name,
            )
        except Exception as exc:
            # Ray Train copies the state into the run's storage and leaves a partial copy
            # when that fails; a later --resume must not pick it up.
            full = disk_full_error(exc, layout.ray_storage, needed)
            if full is None:
                raise
            partial = layout.ray_storage / ray.train.get_context().get_experiment_name() / name
            shutil.rmtree(partial, ignore_errors=True)
            # Asked again once the copy is gone: the free space a retry would have.
            raise (disk_full_error(exc, partial / TrainLayout.STATE_FILE, needed) or full) from exc


def load_train_state(nets: Nets, state_dir: Path, world: int, device) -> tuple[int, list, int]:
    """Networks, optimisers and RNG from a saved state; (iteration, data cursors per rank,
    pairs skipped so far). The cursors are per rank, so the worker count must match."""
    import torch

    from pipeline.core.weights import safe_torch_load

    state = safe_torch_load(
        state_dir / TrainLayout.STATE_FILE,
        device,
        what="a training state",
        fix=f"it is damaged; delete {state_dir} to resume from the state before it, or "
        "train afresh without --resume",
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
        from pipeline.core.weights import file_sha256

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
    from pipeline.core.weights import WeightsError

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
    from pipeline.core.weights import load_into
    from pipeline.generator.inference_api import check_checkpoint
    from pipeline.generator.networks import build_discriminator

    check_checkpoint(init.netG, tc.ngf)
    load_into(build_discriminator(tc.ndf), init.netD)


def load_init_checkpoints(nets: Nets, init: dict) -> int:
    """Both nets from the pair (weights_only); the iteration the run continues from. Adam
    state stays fresh: published checkpoint files hold none."""
    from pipeline.core.weights import load_into

    load_into(nets.netG, init["netG"])
    load_into(nets.netD, init["netD"])
    return int(init["iteration"])


def average_weights(paths: list[Path]) -> dict:
    """The mean of the state dicts in `paths` (float tensors; integer buffers such as
    BatchNorm's batch counts from the last): a generator averaged over its last
    checkpoints draws steadier figures than any one of them, as the EMA generators of
    GAN practice do."""
    import torch

    states = [torch.load(p, map_location="cpu", weights_only=True) for p in paths]
    return {
        key: sum(s[key] for s in states) / len(states) if value.is_floating_point() else value
        for key, value in states[-1].items()
    }
