"""Inception Score as published: torchvision inception_v3 (ImageNet weights,
transform_input=False), images in [-1, 1] resized bilinearly to 299, softmax, one split."""

from __future__ import annotations

import os

import numpy as np
import torch

from pipeline.core.imaging import to_tensor

SIZE = 299


def build_inception(weights: str | os.PathLike | None) -> torch.nn.Module:
    """torchvision inception_v3 in eval mode; `weights` None gives a random network."""
    from torchvision.models import inception_v3

    from pipeline.core.weights import load_into

    net = inception_v3(
        weights=None, aux_logits=True, transform_input=False, init_weights=weights is None
    )
    if weights is not None:
        load_into(net, weights)
    return net.eval()


def resized_batch(images: list[np.ndarray], device: str | torch.device) -> torch.Tensor:
    """uint8 HxWx3 images -> (N, 3, 299, 299) in [-1, 1], bilinear (align_corners=False)."""
    x = torch.stack([to_tensor(im) for im in images]).to(device)
    return torch.nn.functional.interpolate(
        x, size=(SIZE, SIZE), mode="bilinear", align_corners=False
    )


@torch.no_grad()
def class_probabilities(net: torch.nn.Module, images: list[np.ndarray]) -> np.ndarray:
    """Softmax over the 1000 ImageNet classes per image -> float32 (N, 1000)."""
    device = next(net.parameters()).device
    logits = net(resized_batch(images, device))
    return torch.softmax(logits.float(), dim=1).cpu().numpy()


def inception_score(probs: np.ndarray, eps: float = 1e-12) -> float:
    """IS = exp(mean_i KL(p(y|x_i) || p(y))), p(y) = mean_i p(y|x_i), over one split.
    `eps` guards log(0) for classes with zero probability."""
    p = np.asarray(probs, np.float64)
    marginal = p.mean(axis=0, keepdims=True)
    kl = (p * (np.log(p + eps) - np.log(marginal + eps))).sum(axis=1)
    return float(np.exp(kl.mean()))
