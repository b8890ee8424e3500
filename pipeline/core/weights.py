"""Weights resolution and safe loading. Plain state dicts load with weights_only=True;
anything else (a pickle carrying code, a whole pickled module) is refused."""

from __future__ import annotations

import os
import pickle
import re
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core import storage
from pipeline.core.errors import WeightsError
from pipeline.core.object_path import data_path
from pipeline.core.paths import checkpoint_sort_key

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch is imported where a file is loaded: listing, naming and digesting checkpoints
# (an up-to-date generate) costs no torch import (seconds).

CHECKPOINT_RE = re.compile(r"^netG_(\d+)\.pth$")


def torch_cache_dir() -> Path:
    """The standard torch hub cache (`$TORCH_HOME`, default ~/.cache/torch)."""
    import torch

    return Path(torch.hub.get_dir()).parent


# What torch.load raises on a file it cannot read safely: the weights-only unpickler's
# refusal, a damaged zip or legacy stream (its parser fails in many ways), an empty file.
LOAD_FAILURES = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    ValueError,
    AttributeError,
    IndexError,
    KeyError,
    struct.error,
)


def refusal_reason(exc: BaseException) -> str:
    """What torch says is wrong with a file, without its advice: torch suggests loading
    with weights_only=False ("will likely succeed") or allow-listing the offending class,
    and either would run whatever code the file carries."""
    text = str(exc).strip()
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    reason = found.group(1) if found else (text.splitlines()[0] if text else "")
    reason = re.split(r"\.?\s+Please\b", reason)[0].strip().rstrip(".")
    if not reason or re.search(r"weights_only|likely succeed|safe_globals", reason):
        reason = "it is damaged, cut short or not a torch file"
    return f"{type(exc).__name__}: {reason}"


def safe_torch_load(
    path: str | os.PathLike,
    map_location: Any = "cpu",
    allowed: Iterable[Any] = (),
    what: str = "a plain state dict",
    fix: str = "only tensors load safely; re-save it with torch.save(model.state_dict(), path)",
) -> Any:
    """torch.load with weights_only=True (and only the `allowed` classes besides tensors),
    the one place files are unpickled. A file it refuses raises WeightsError naming the
    file, saying it is not `what`, and `fix`."""
    import torch

    path = data_path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    source = storage.readable(path)
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(source, map_location=map_location, weights_only=True)
    except LOAD_FAILURES as exc:
        # Not chained: torch's message advises loading the file unsafely.
        raise WeightsError(
            f"{path} is not {what} (refused by the weights-only loader: "
            f"{refusal_reason(exc)}); {fix}."
        ) from None


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a plain state dict on CPU with `weights_only=True`."""
    import torch

    obj = safe_torch_load(path)
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
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
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
    name = os.path.basename(str(path))  # a local path or an object key
    m = CHECKPOINT_RE.match(name)
    return m.group(1) if m else os.path.splitext(name)[0]


def resolve_checkpoint(ref: str, checkpoint_dir: str | os.PathLike | None = None) -> Path:
    """A generator checkpoint by path, or by id (`257500` -> `netG_257500.pth` in
    `checkpoint_dir`)."""
    path = data_path(ref)
    if path.is_file():
        return path
    if checkpoint_dir is not None and re.fullmatch(r"\d+", ref):
        candidate = data_path(checkpoint_dir) / f"netG_{ref}.pth"
        if candidate.is_file():
            return candidate
        raise WeightsError(f"checkpoint id {ref}: {candidate} not found")
    where = f" or as netG_{ref}.pth in {checkpoint_dir}" if checkpoint_dir else ""
    raise WeightsError(f"checkpoint {ref!r} not found as a file{where}")


def expand_checkpoints(
    refs: list[str], checkpoint_dir: str | os.PathLike | None = None
) -> list[Path]:
    """Paths, ids, or directories (every netG_<iter>.pth inside, by iteration)."""
    out: list[Path] = []
    for ref in refs:
        p = data_path(ref)
        if p.is_dir():
            found = sorted(
                (q for q in p.iterdir() if CHECKPOINT_RE.match(q.name)),
                key=lambda q: checkpoint_sort_key(checkpoint_id(q)),
            )
            if not found:
                raise WeightsError(f"no netG_<iter>.pth files in directory {p}")
            out.extend(found)
        else:
            out.append(resolve_checkpoint(ref, checkpoint_dir))
    return out


# --- the registry of third-party weights (never downloaded at test time) ---------------

from dataclasses import dataclass  # noqa: E402


@dataclass(frozen=True)
class WeightSpec:
    name: str
    used_for: str
    filename: str  # as the torch hub cache names it
    url: str


_TV = "https://download.pytorch.org/models/"
KNOWN_WEIGHTS: dict[str, WeightSpec] = {
    w.name: w
    for w in (
        WeightSpec(
            "vgg19", "training: perceptual loss", "vgg19-dcbb9e9d.pth", _TV + "vgg19-dcbb9e9d.pth"
        ),
        WeightSpec(
            "inception_v3",
            "evaluate: IS",
            "inception_v3_google-0cc3c7bd.pth",
            _TV + "inception_v3_google-0cc3c7bd.pth",
        ),
        WeightSpec(
            "fid_inception",
            "evaluate: FID",
            "pt_inception-2015-12-05-6726825d.pth",
            "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
            "pt_inception-2015-12-05-6726825d.pth",
        ),
        WeightSpec(
            "alexnet",
            "evaluate: LPIPS alex",
            "alexnet-owt-7be5be79.pth",
            _TV + "alexnet-owt-7be5be79.pth",
        ),
        WeightSpec(
            "vgg16", "evaluate: LPIPS vgg", "vgg16-397923af.pth", _TV + "vgg16-397923af.pth"
        ),
        WeightSpec(
            "squeezenet1_1",
            "evaluate: LPIPS squeeze",
            "squeezenet1_1-b8a52dc0.pth",
            _TV + "squeezenet1_1-b8a52dc0.pth",
        ),
        WeightSpec(
            "ssd300",
            "evaluate: DS (person detection)",
            "ssd300_vgg16_coco-b556d3b4.pth",
            _TV + "ssd300_vgg16_coco-b556d3b4.pth",
        ),
        # openpifpaf's default checkpoint, as its CHECKPOINT_URLS names and caches it.
        WeightSpec(
            "shufflenetv2k16",
            "keypoints and evaluate: PCKh (openpifpaf)",
            "shufflenetv2k16-210820-232500-cocokp-slurm726069-edge513-o10s-7189450a.pkl",
            "http://github.com/openpifpaf/torchhub/releases/download/v0.13/"
            "shufflenetv2k16-210820-232500-cocokp-slurm726069-edge513-o10s-7189450a.pkl",
        ),
    )
}


def weight_search_dirs(extra_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where weight files are looked for, in order: the configured dir, the torch cache."""
    dirs = [Path(extra_dir)] if extra_dir else []
    return dirs + [torch_cache_dir() / "hub" / "checkpoints"]


def find_weight(filename: str, extra_dir: str | os.PathLike | None = None) -> Path | None:
    for d in weight_search_dirs(extra_dir):
        if (d / filename).is_file():
            return d / filename
    return None


def require_weight(name: str, extra_dir: str | os.PathLike | None = None) -> Path:
    """The file of a known weight, or a WeightsError naming the file and where to put it."""
    spec = KNOWN_WEIGHTS[name]
    found = find_weight(spec.filename, extra_dir)
    if found is None:
        dirs = " or ".join(str(d) for d in weight_search_dirs(extra_dir))
        raise WeightsError(
            f"missing weights for {spec.used_for}: {spec.filename} not found in {dirs}. "
            f"Put the file there (from {spec.url}), or run `run_pipeline.py weights fetch {name}` "
            "where the internet is reachable."
        )
    return found


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (weight files are hundreds of MB)."""
    import hashlib

    if not storage.is_local(path):  # an object: read whole (checkpoints, tens of MB)
        return hashlib.sha256(storage.read_bytes(path)).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
