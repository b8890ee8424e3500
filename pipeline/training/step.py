"""The published training step on NetG/NetD: networks and Adam optimisers, autocast, the
loss weights and the VGG19 perceptual term's weights, and one iteration."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.config import Config, TrainConfig

log = logging.getLogger(__name__)

LOSS_NAMES = ("g_total", "g_l1", "g_gan", "g_perceptual", "d_total", "d_real", "d_fake")


@dataclass
class Nets:
    """Generator, discriminator (possibly DDP-wrapped) and their Adam optimisers."""

    netG: Any
    netD: Any
    optG: Any
    optD: Any
    scaler: Any

    def plain(self, net) -> Any:
        """The unwrapped module: its state_dict has the official parameter names."""
        return getattr(net, "module", net)


def build_nets(tc: TrainConfig, device: str = "cpu") -> Nets:
    """Published init (seeded, so every rank starts identical) and Adam(lr, betas)."""
    import torch

    from pipeline.generator.networks import build_discriminator, build_generator

    torch.manual_seed(tc.seed)
    layout = memory_format(tc)
    netG = build_generator(tc.ngf).to(device, memory_format=layout)
    netD = build_discriminator(tc.ndf).to(device, memory_format=layout)
    betas = (tc.beta1, tc.beta2)
    return Nets(
        netG,
        netD,
        torch.optim.Adam(netG.parameters(), lr=tc.lr, betas=betas),
        torch.optim.Adam(netD.parameters(), lr=tc.lr, betas=betas),
        torch.amp.GradScaler(device, enabled=tc.autocast == "fp16"),
    )


def memory_format(tc: TrainConfig):
    import torch

    return torch.channels_last if tc.channels_last else torch.contiguous_format


def to_device(batch, device, tc: TrainConfig) -> tuple:
    """The batch on the device, in the nets' memory format."""
    layout = memory_format(tc)
    return tuple(t.to(device, non_blocking=True).contiguous(memory_format=layout) for t in batch)


def autocast_for(tc: TrainConfig, device: str):
    import torch

    from pipeline.generator.inference_api import AUTOCAST_DTYPES

    dtype = AUTOCAST_DTYPES[tc.autocast]
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype is not None)


def train_step(nets: Nets, batch, weights, perceptual, amp) -> dict[str, Any]:
    """One published iteration: generate, update D on (A, B) vs (A, fake), then update G.
    Returns the loss tensors (detached)."""
    import torch

    from pipeline.training.losses import discriminator_loss, generator_loss

    a, b, maps = batch
    with amp:
        fake = nets.netG(a, maps)
        d_real = nets.netD(torch.cat([a, b], 1))
        d_fake = nets.netD(torch.cat([a, fake.detach()], 1))
    d_parts = discriminator_loss(d_real.float(), d_fake.float())
    nets.optD.zero_grad(set_to_none=True)
    nets.scaler.scale(d_parts["d_total"]).backward()
    nets.scaler.step(nets.optD)

    with amp:
        d_fake_for_g = nets.netD(torch.cat([a, fake], 1))
    g_parts = generator_loss(fake.float(), b, d_fake_for_g.float(), weights, perceptual)
    nets.optG.zero_grad(set_to_none=True)
    nets.scaler.scale(g_parts["g_total"]).backward()
    nets.scaler.step(nets.optG)
    nets.scaler.update()
    return {k: v.detach() for k, v in {**d_parts, **g_parts}.items()}


def loss_weights(tc: TrainConfig):
    from pipeline.training.losses import LossWeights

    return LossWeights(l1=tc.lambda_l1, gan=tc.lambda_gan, perceptual=tc.lambda_perceptual)


def resolve_vgg_weights(cfg: Config) -> tuple[Path | None, str]:
    """The VGG19 file for the perceptual term, or None with the reason it is off.
    `auto` without weights warns once and trains without it; `required` raises."""
    from pipeline.core.weights import WeightsError, require_weight

    tc = cfg.train
    if tc.perceptual == "off" or tc.lambda_perceptual == 0:
        return None, "off by config"
    try:
        if tc.vgg_weights:
            path = Path(tc.vgg_weights)
            if not path.is_file():
                raise WeightsError(
                    f"train.vgg_weights: {path} not found; give the path of "
                    "vgg19-dcbb9e9d.pth or leave it empty to search the torch cache"
                )
            return path, "used"
        return require_weight("vgg19", cfg.weights.dir), "used"
    except WeightsError as exc:
        if tc.perceptual == "required":
            raise
        log.warning("training WITHOUT the perceptual term (train.perceptual: auto): %s", exc)
        return None, f"skipped: {exc}"
