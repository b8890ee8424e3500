"""Detection score (DS): the highest "person" confidence of an SSD300 COCO detector per
image, 0 when none. torchvision's SSD300-VGG16 stands in for the NVIDIA SSD of the
published code, so absolute values differ from the published table."""

from __future__ import annotations

import os

import numpy as np
import torch

PERSON_LABEL = 1  # COCO category id of "person" in torchvision's 91-class labels


def build_ssd(weights: str | os.PathLike | None) -> torch.nn.Module:
    """SSD300-VGG16 with 91 COCO classes in eval mode; None gives a random network."""
    from torchvision.models.detection import ssd300_vgg16

    from pipeline.core.weights import load_into

    net = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=91)
    if weights is not None:
        load_into(net, weights)
    return net.eval()


def best_person_scores(detections: list[dict[str, torch.Tensor]]) -> np.ndarray:
    """max score over the detections labelled person, per image; 0.0 when there are none."""
    out = []
    for det in detections:
        scores = det["scores"][det["labels"] == PERSON_LABEL]
        out.append(float(scores.max()) if len(scores) else 0.0)
    return np.asarray(out, np.float64)


@torch.no_grad()
def person_scores(net: torch.nn.Module, images: list[np.ndarray]) -> np.ndarray:
    """DS per image. The detector resizes to 300 and normalises itself; inputs in [0, 1]."""
    device = next(net.parameters()).device
    batch = [
        torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float().div(255).to(device)
        for im in images
    ]
    return best_person_scores(net(batch))
