"""OpenPose-18 keypoints from images with openpifpaf: checkpoint resolution, loading a
pickled openpifpaf network through an explicit allow-list, and a batch predictor."""

from __future__ import annotations

import os
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from pipeline.core.weights import (
    KNOWN_WEIGHTS,
    WeightsError,
    find_weight,
    require_weight,
    safe_torch_load,
    weight_search_dirs,
)
from pipeline.pose.skeleton import MISSING, N_KEYPOINTS, Keypoints, coco17_to_op18

DEFAULT_CHECKPOINT = "shufflenetv2k16"


def _openpifpaf():
    import openpifpaf  # registers the plugins that fill CHECKPOINT_URLS

    return openpifpaf


def checkpoint_filename(name: str) -> str | None:
    """The file name openpifpaf's torch-cache download gives a named checkpoint."""
    url = _openpifpaf().CHECKPOINT_URLS.get(name)
    return os.path.basename(url) if isinstance(url, str) else None


def checkpoint_file_name(ref: str | os.PathLike) -> str | None:
    """The name of the file `resolve_checkpoint(ref)` finds, known without looking for it
    (None for a name openpifpaf does not know)."""
    if Path(ref).is_file():
        return Path(ref).name
    name = str(ref)
    if name in KNOWN_WEIGHTS:
        return KNOWN_WEIGHTS[name].filename
    return checkpoint_filename(name)


def resolve_checkpoint(
    ref: str | os.PathLike, weights_dir: str | os.PathLike | None = None
) -> Path:
    """An openpifpaf checkpoint by path, or by name (`shufflenetv2k16`) from the weights dir
    or the torch hub cache, where openpifpaf itself caches its downloads."""
    path = Path(ref)
    if path.is_file():
        return path
    name = str(ref)
    if name in KNOWN_WEIGHTS:
        return require_weight(name, weights_dir)
    op = _openpifpaf()
    if op.CHECKPOINT_URLS.get(name) is op.PRETRAINED_UNAVAILABLE:
        raise WeightsError(
            f"openpifpaf publishes no pretrained weights for {name!r}; "
            f"use {DEFAULT_CHECKPOINT} or pass --checkpoint PATH"
        )
    filename = checkpoint_filename(name)
    if filename is None:
        raise WeightsError(
            f"openpifpaf checkpoint {name!r} is neither a file nor a known checkpoint name "
            f"(known: {sorted(k for k, v in op.CHECKPOINT_URLS.items() if isinstance(v, str))})"
        )
    found = find_weight(filename, weights_dir)
    if found is None:
        dirs = " or ".join(str(d) for d in weight_search_dirs(weights_dir))
        raise WeightsError(
            f"missing openpifpaf weights {filename} for {name!r}: not found in {dirs}. "
            f"Put the file there (from {op.CHECKPOINT_URLS[name]}) or pass --checkpoint PATH."
        )
    return found


def _base_name(ref: str | os.PathLike) -> str:
    """The openpifpaf base network a checkpoint name or file name starts with."""
    stem = Path(ref).name
    bases = [b for b in _openpifpaf().BASE_FACTORIES if stem.startswith(b)]
    return max(bases, key=len) if bases else DEFAULT_CHECKPOINT


def _classes_in(obj, found: set[type], seen: set[int]) -> None:
    """Every non-builtin class reachable from `obj`'s attributes (what pickling it stores)."""
    if id(obj) in seen or isinstance(obj, torch.Tensor):
        return
    seen.add(id(obj))
    if isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _classes_in(v, found, seen)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _classes_in(k, found, seen)
            _classes_in(v, found, seen)
    elif type(obj).__module__ != "builtins":
        found.add(type(obj))
        if hasattr(obj, "__dict__"):
            _classes_in(vars(obj), found, seen)


@lru_cache(maxsize=8)
def checkpoint_allowlist(base_name: str = DEFAULT_CHECKPOINT) -> tuple:
    """The classes an openpifpaf checkpoint of `base_name` may contain: collected by building
    that network with COCO keypoint heads through openpifpaf's factory and walking it."""
    op = _openpifpaf()
    factory = op.network.Factory()
    factory.base_name = base_name
    net, _ = factory.factory(head_metas=op.plugins.coco.CocoKp().head_metas)
    found: set[type] = set()
    _classes_in(net, found, set())
    allowed: list = sorted(found, key=lambda t: f"{t.__module__}.{t.__qualname__}")
    if np.ndarray in found:
        # numpy arrays (head metas' poses) pickle through _reconstruct and their dtype;
        # checkpoints written under numpy 1.x name it numpy.core.multiarray._reconstruct.
        reconstruct = np._core.multiarray._reconstruct
        allowed += [
            np.dtype,
            reconstruct,
            (reconstruct, "numpy.core.multiarray._reconstruct"),
            *{type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32)},
        ]
    return tuple(allowed)


def load_network(path: str | os.PathLike, device: str = "cpu"):
    """Load an openpifpaf checkpoint ({'model': Shell, 'epoch': ...}) with weights_only=True,
    allowing only the classes openpifpaf's own network of that base is made of."""
    op = _openpifpaf()
    path = Path(path)
    ckpt = safe_torch_load(
        path,
        allowed=checkpoint_allowlist(_base_name(path)),
        what="a loadable openpifpaf checkpoint",
        fix="only tensors and the classes openpifpaf's own network is made of load safely",
    )
    net = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(net, op.network.nets.Shell):
        raise WeightsError(
            f"{path} has no openpifpaf network under 'model' (got {type(net).__name__})"
        )
    op.network.model_migration.model_migration(net)
    return net.eval().to(device)


def best_person(annotations, min_score: float = 0.0) -> Keypoints:
    """OpenPose-18 keypoints of the highest-scoring openpifpaf annotation (all -1 if none)."""
    if not annotations:
        return (
            np.full(N_KEYPOINTS, MISSING, np.int32),
            np.full(N_KEYPOINTS, MISSING, np.int32),
            np.zeros(N_KEYPOINTS, np.float32),
        )
    best = max(annotations, key=lambda ann: ann.score)
    return coco17_to_op18(best.data[:, :2], best.data[:, 2], min_score)


def inside_image(kp: Keypoints, height: int, width: int) -> Keypoints:
    """Keypoints predicted outside the frame become missing: the legacy CSV has no way to
    hold negative coordinates and a pose map has no pixel for them."""
    x, y, score = (a.copy() for a in kp)
    outside = (x < 0) | (y < 0) | (x >= width) | (y >= height)
    x[outside], y[outside], score[outside] = MISSING, MISSING, 0.0
    return x, y, score


class KeypointEstimator:
    """openpifpaf on a list of RGB images -> OpenPose-18 keypoints of the highest-scoring
    person per image. Images of equal size run through the network as one batch."""

    def __init__(
        self,
        checkpoint: str | os.PathLike = DEFAULT_CHECKPOINT,
        device: str | None = None,
        min_score: float = 0.0,
        weights_dir: str | os.PathLike | None = None,
    ):
        from pipeline.cluster.runtime import best_device

        op = _openpifpaf()
        self.device = torch.device(device or best_device())
        self.path = resolve_checkpoint(checkpoint, weights_dir)
        self.name = f"openpifpaf:{checkpoint if not Path(checkpoint).is_file() else self.path.name}"
        self.min_score = min_score
        self.net = load_network(self.path, str(self.device))
        self.decoder = op.decoder.factory(self.net.head_metas)
        # Predictor's single-image preprocessing: pad to a multiple of 16, normalise.
        t = op.transforms
        self.preprocess = t.Compose(
            [t.NormalizeAnnotations(), t.CenterPadTight(16), t.EVAL_TRANSFORM]
        )

    def predict(self, images: list[np.ndarray]) -> list[Keypoints]:
        from PIL import Image

        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for i, im in enumerate(images):
            by_shape[im.shape].append(i)
        out: list[Keypoints | None] = [None] * len(images)
        for shape, idx in by_shape.items():
            processed = [self.preprocess(Image.fromarray(images[i]), [], {}) for i in idx]
            batch = torch.stack([p[0] for p in processed])
            with torch.inference_mode():
                preds = self.decoder.batch(self.net, batch, device=self.device)
            for i, (_, _, meta), anns in zip(idx, processed, preds, strict=True):
                anns = [ann.inverse_transform(meta) for ann in anns]
                out[i] = inside_image(best_person(anns, self.min_score), shape[0], shape[1])
        return out
