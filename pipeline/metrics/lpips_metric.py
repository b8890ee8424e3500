"""LPIPS with the `lpips` package (alex, vgg, squeeze; registry.LPIPS_NETS names their
backbone files): its linear calibration layers ship with the package; the backbones load
from local torchvision weight files."""

from __future__ import annotations

import os

import numpy as np
import torch

from pipeline.core.imaging import to_tensor


def backbone_state(
    lpips_net: torch.nn.Module, torchvision_state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename torchvision `features.<i>.<param>` to lpips' `slice<k>.<i>.<param>`."""
    out = {}
    for key in lpips_net.state_dict():
        _, index, param = key.split(".", 2)
        out[key] = torchvision_state[f"features.{index}.{param}"]
    return out


def build_lpips(net: str, backbone_weights: str | os.PathLike | None) -> torch.nn.Module:
    """lpips.LPIPS in eval mode; `backbone_weights` None leaves the backbone random."""
    import lpips

    from pipeline.core.weights import WeightsError, load_state_dict

    model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    if backbone_weights is not None:
        try:
            model.net.load_state_dict(backbone_state(model.net, load_state_dict(backbone_weights)))
        except (KeyError, RuntimeError) as exc:
            raise WeightsError(
                f"{backbone_weights} does not fit the LPIPS {net} backbone: {exc}"
            ) from exc
    return model.eval()


@torch.no_grad()
def lpips_distances(
    model: torch.nn.Module, real: list[np.ndarray], fake: list[np.ndarray]
) -> np.ndarray:
    """LPIPS distance per pair, inputs RGB in [-1, 1] -> float64 (N,)."""
    device = next(model.parameters()).device
    a = torch.stack([to_tensor(im) for im in real]).to(device)
    b = torch.stack([to_tensor(im) for im in fake]).to(device)
    return model(a, b).flatten().double().cpu().numpy()
