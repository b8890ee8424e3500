"""Weights resolution and safe loading. Plain state dicts load with weights_only=True;
anything else (a pickle carrying code, a whole pickled module) is refused."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch
from torch import nn


class WeightsError(RuntimeError):
    """A weight file is missing, unsafe or does not fit the network."""


CHECKPOINT_RE = re.compile(r"^netG_(\d+)\.pth$")


def torch_cache_dir() -> Path:
    """The standard torch hub cache (`$TORCH_HOME`, default ~/.cache/torch)."""
    return Path(torch.hub.get_dir()).parent


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a plain state dict on CPU with `weights_only=True`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{path} is not a plain state dict (refused by the weights-only loader: {first}). "
            "Only tensors may be stored; re-save it with torch.save(model.state_dict(), path)."
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise WeightsError(f"{path} is not a state dict (a mapping of parameter names to tensors)")
    return obj


def load_into(net: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a state dict into `net`, with an error naming the file and the mismatch."""
    state = load_state_dict(path)
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs network {tuple(v.shape)}"
        for k, v in own.items() if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es), e.g. {wrong[0]} (wrong ngf/ndf?)")
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        raise WeightsError(f"{path} does not fit {type(net).__name__}: " + "; ".join(parts))
    net.load_state_dict(state)
    return net


def checkpoint_id(path: str | os.PathLike) -> str:
    """`netG_257500.pth` -> `257500`; other names -> their stem."""
    name = Path(path).name
    m = CHECKPOINT_RE.match(name)
    return m.group(1) if m else Path(path).stem


def resolve_checkpoint(ref: str, checkpoint_dir: str | os.PathLike | None = None) -> Path:
    """A generator checkpoint by path, or by id (`257500` -> `netG_257500.pth` in
    `checkpoint_dir`)."""
    path = Path(ref)
    if path.is_file():
        return path
    if checkpoint_dir is not None and re.fullmatch(r"\d+", ref):
        candidate = Path(checkpoint_dir) / f"netG_{ref}.pth"
        if candidate.is_file():
            return candidate
        raise WeightsError(f"checkpoint id {ref}: {candidate} not found")
    where = f" or as netG_{ref}.pth in {checkpoint_dir}" if checkpoint_dir else ""
    raise WeightsError(f"checkpoint {ref!r} not found as a file{where}")


def expand_checkpoints(refs: list[str], checkpoint_dir: str | os.PathLike | None = None) -> list[Path]:
    """Paths, ids, or directories (every netG_<iter>.pth inside, by iteration)."""
    out: list[Path] = []
    for ref in refs:
        p = Path(ref)
        if p.is_dir():
            found = sorted(
                (q for q in p.iterdir() if CHECKPOINT_RE.match(q.name)),
                key=lambda q: int(checkpoint_id(q)),
            )
            if not found:
                raise WeightsError(f"no netG_<iter>.pth files in directory {p}")
            out.extend(found)
        else:
            out.append(resolve_checkpoint(ref, checkpoint_dir))
    return out
