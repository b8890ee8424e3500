"""FID with pytorch-fid: its FID Inception (pool3 features, its input resizing and
normalisation) for a real and a generated set, and its Frechet distance, with its check on
the imaginary part. Only the weights come from us: a local file (the TF-ported
pt_inception-2015-12-05-6726825d.pth), never pytorch-fid's download."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from unittest import mock

import numpy as np
import torch
from pytorch_fid import inception as pf
from pytorch_fid.fid_score import calculate_frechet_distance

FEATURES = 2048


@contextlib.contextmanager
def _local_weights(weights: str | os.PathLike | None) -> Iterator[None]:
    """pytorch-fid builds its network, then fetches the weights by URL; hand it the local
    file (weights_only) instead, or for None the random initial weights of what it built."""
    from pipeline.core.weights import load_state_dict

    built: list[torch.nn.Module] = []
    build = pf._inception_v3

    def keep(*args, **kwargs):
        built.append(build(*args, **kwargs))
        return built[-1]

    def fetch(url, **kwargs):
        return load_state_dict(weights) if weights is not None else built[-1].state_dict()

    with mock.patch.object(pf, "_inception_v3", keep), \
            mock.patch.object(pf, "load_state_dict_from_url", fetch):  # fmt: skip
        yield


def fid_inception3(weights: str | os.PathLike | None) -> torch.nn.Module:
    """pytorch-fid's FID Inception network itself (the official file's key layout)."""
    with _local_weights(weights):
        return pf.fid_inception_v3().eval()


def build_fid_inception(weights: str | os.PathLike | None) -> torch.nn.Module:
    """pytorch-fid's InceptionV3 up to pool3, in eval mode; None: random weights."""
    with _local_weights(weights):
        net = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURES]])
    return net.eval()


@torch.no_grad()
def pool3_features(net: torch.nn.Module, images: list[np.ndarray]) -> np.ndarray:
    """2048-d pool3 features per uint8 HxWx3 image -> float32 (N, 2048). pytorch-fid takes
    [0, 1] inputs and resizes them to 299 itself."""
    device = next(net.parameters()).device
    x = torch.from_numpy(np.stack(images)).to(device)
    x = x.permute(0, 3, 1, 2).float() / 255.0
    return net(x)[0].flatten(1).float().cpu().numpy()


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature sets (rows = images; at least 2 each for a covariance)."""
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(
            f"FID needs at least 2 images per set, got {len(real)} real and {len(fake)} generated"
        )
    r, f = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    mu1, mu2 = r.mean(0), f.mean(0)
    s1, s2 = np.cov(r, rowvar=False), np.cov(f, rowvar=False)
    return float(calculate_frechet_distance(mu1, s1, mu2, s2))
