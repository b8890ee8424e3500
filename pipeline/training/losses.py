"""The published training objective (DESIGN 4): LSGAN, L1 and a VGG19 perceptual term,
combined into the generator and discriminator losses with configurable weights."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# ImageNet statistics the torchvision VGG19 weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The published perceptual term compares VGG19 `features[:4]` (relu1_2) and
# `features[:9]` (relu2_2).
VGG_CUTS = (4, 9)


def lsgan_loss(prediction: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN: mean squared distance of the patch scores to 1 (real) or 0 (fake)."""
    target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
    return F.mse_loss(prediction, target)


def l1_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(fake, real)


def minmax_scale(images: torch.Tensor) -> torch.Tensor:
    """Stretch each image of (N, C, H, W) to [0, 1] over all its pixels and channels; the
    1e-8 guard keeps a flat image finite (it maps to 0)."""
    lo = images.amin(dim=(1, 2, 3), keepdim=True)
    hi = images.amax(dim=(1, 2, 3), keepdim=True)
    return (images - lo) / (hi - lo).clamp_min(1e-8)


def imagenet_normalise(images: torch.Tensor) -> torch.Tensor:
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


class PerceptualLoss(nn.Module):
    """L1 between VGG19 `features[:4]` outputs plus L1 between `features[:9]` outputs of
    the two images, each image min-max scaled then ImageNet-normalised. The VGG slice is
    frozen; gradients flow to the generated image only."""

    def __init__(self, vgg_features: nn.Sequential):
        super().__init__()
        self.low = nn.Sequential(*list(vgg_features)[: VGG_CUTS[0]])
        self.high = nn.Sequential(*list(vgg_features)[VGG_CUTS[0] : VGG_CUTS[1]])
        self.requires_grad_(False)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        x = imagenet_normalise(minmax_scale(torch.cat([fake, real]).float()))
        low = self.low(x)
        high = self.high(low)
        n = fake.shape[0]
        return F.l1_loss(low[:n], low[n:]) + F.l1_loss(high[:n], high[n:])


def vgg19_features(weights_path: str | os.PathLike | None) -> nn.Sequential:
    """The first `VGG_CUTS[-1]` layers of torchvision's VGG19; with ImageNet weights from
    `weights_path` (loaded weights-only), random-initialised when it is None."""
    from torchvision.models import vgg19

    from pipeline.core.weights import load_into

    net = vgg19(weights=None)
    if weights_path is not None:
        load_into(net, weights_path)
    return nn.Sequential(*list(net.features)[: VGG_CUTS[-1]])


@dataclass(frozen=True)
class LossWeights:
    l1: float = 5.0
    gan: float = 1.0
    perceptual: float = 5.0


def generator_loss(
    fake: torch.Tensor,
    real: torch.Tensor,
    d_fake: torch.Tensor,
    weights: LossWeights,
    perceptual: PerceptualLoss | None,
) -> dict[str, torch.Tensor]:
    """G = l1 x L1 + gan x LSGAN(D(A, fake) vs real) + perceptual x VGG term (when given)."""
    parts = {"g_l1": l1_loss(fake, real), "g_gan": lsgan_loss(d_fake, True)}
    total = weights.l1 * parts["g_l1"] + weights.gan * parts["g_gan"]
    if perceptual is not None:
        parts["g_perceptual"] = perceptual(fake, real)
        total = total + weights.perceptual * parts["g_perceptual"]
    parts["g_total"] = total
    return parts


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> dict[str, torch.Tensor]:
    """D = 0.5 x (LSGAN(D(A, B) vs real) + LSGAN(D(A, fake) vs fake))."""
    real = lsgan_loss(d_real, True)
    fake = lsgan_loss(d_fake, False)
    return {"d_real": real, "d_fake": fake, "d_total": 0.5 * (real + fake)}
