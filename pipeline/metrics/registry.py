"""The metrics the evaluate stage knows: their names, what they score (pixel pairs, network
on pairs, network on single images), the weights they need, and the network scorer each
builds. The maths of each metric lives in its own module beside this one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.core.errors import ConfigError

METRICS = ("ssim", "psnr", "is", "ds", "pckh", "lpips", "fid")
LPIPS_METRICS = ("lpips_alex", "lpips_vgg", "lpips_squeeze")


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as stored in tables (lpips expands to one per backbone)
    kind: str  # pixel: pairs, Ray tasks; pair / image: network on pairs / single images
    weight: str | None  # KNOWN_WEIGHTS name, None when no network weights are needed
    per_image: bool  # False: a set-level score (IS, FID) computed from stored features


SPECS = {
    s.name: s
    for s in (
        MetricSpec("ssim", "pixel", None, True),
        MetricSpec("psnr", "pixel", None, True),
        MetricSpec("is", "image", "inception_v3", False),
        MetricSpec("ds", "image", "ssd300", True),
        MetricSpec("pckh", "pair", None, False),
        MetricSpec("lpips_alex", "pair", "alexnet", True),
        MetricSpec("lpips_vgg", "pair", "vgg16", True),
        MetricSpec("lpips_squeeze", "pair", "squeezenet1_1", True),
        MetricSpec("fid", "image", "fid_inception", False),
    )
}

REAL = "real"  # checkpoint value of rows scoring the real images (IS, DS, FID)
# Checkpoint value of rows that score the condition image as if it were the generated one:
# what copying the input earns, the floor a generator must beat.
COPY = "copy"
BASELINES = (REAL, COPY)
# Scores of the real target against itself: the ceiling, by definition (PCKh's is computed
# against reference keypoints when the dataset has them).
REAL_BY_DEFINITION = {
    "ssim": 1.0,
    "psnr": float("inf"),
    "pckh": 1.0,
    "fid": 0.0,
    **dict.fromkeys(LPIPS_METRICS, 0.0),
}
BY_DEFINITION = "by definition"


def expand_metrics(names: list[str]) -> list[str]:
    """Config names -> stored metric names (lpips -> one per backbone), checked."""
    out = []
    for name in names:
        if name == "lpips":
            out += LPIPS_METRICS
        elif name in SPECS:
            out.append(name)
        else:
            raise ConfigError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return list(dict.fromkeys(out))


def weights_for(metric: str, mode: str, weights_dir: str | None, keypoints=None):
    """The weight file path of a metric's network (None: random or no weights needed); for
    PCKh the configured keypoint estimator (`keypoints`), resolved, pretrained in either
    mode. Raises WeightsError naming the missing file."""
    from pipeline.core.weights import load_state_dict, require_weight

    spec = SPECS[metric]
    if metric == "pckh":
        from pipeline.core.config import KeypointsConfig
        from pipeline.pose.estimator_factory import resolve_estimator

        return resolve_estimator(keypoints or KeypointsConfig(), weights_dir)
    if spec.weight is None or mode == "random":
        return None
    path = require_weight(spec.weight, weights_dir)
    load_state_dict(path)  # an unusable file fails here, naming it, not in every actor
    return str(path)


def build_scorer(
    metric: str, weights: str | None
) -> Callable[[list[np.ndarray], list[np.ndarray] | None], list[dict]]:
    """The network scorer of `metric`: (real images, fake images) -> one dict per image.
    Image metrics score the first list only; `weights` None builds a random network."""
    from pipeline.cluster.runtime import best_device

    device = best_device()
    if metric == "is":
        from pipeline.metrics.inception_score import build_inception, class_probabilities

        net = build_inception(weights).to(device)
        return lambda images, _: [{"features": p} for p in class_probabilities(net, images)]
    if metric == "fid":
        from pipeline.metrics.fid import build_fid_inception, pool3_features

        net = build_fid_inception(weights).to(device)
        return lambda images, _: [{"features": f} for f in pool3_features(net, images)]
    if metric == "ds":
        from pipeline.metrics.detection_score import build_ssd, person_scores

        net = build_ssd(weights).to(device)
        return lambda images, _: [{"value": v} for v in person_scores(net, images)]
    if metric in LPIPS_METRICS:
        from pipeline.metrics.lpips_metric import build_lpips, lpips_distances

        model = build_lpips(metric.split("_", 1)[1], weights).to(device)
        return lambda real, fake: [{"value": v} for v in lpips_distances(model, real, fake)]
    if metric == "pckh":  # `weights`: the keypoints config resolve_estimator checked
        from pipeline.pose.estimator_factory import build_estimator, predict_once_per_image

        predict = predict_once_per_image(build_estimator(weights, device=device))
        return lambda real, fake: pckh_rows(predict(real), predict(fake))
    raise ValueError(f"no network scorer for metric {metric!r}")


def pckh_rows(real_kp: list, fake_kp: list) -> list[dict]:
    """Per-image PCKh counts from estimated keypoints; an image whose real keypoints have
    fewer than 2 head points is not counted and says so."""
    from pipeline.metrics.pckh import MIN_HEAD_KEYPOINTS, pckh_counts

    out = []
    for (rx, ry, _), (fx, fy, _) in zip(real_kp, fake_kp, strict=True):
        counts = pckh_counts(rx, ry, fx, fy)
        if counts is None:
            out.append(
                {
                    "error": f"not counted: fewer than {MIN_HEAD_KEYPOINTS} head keypoints "
                    "in the real image"
                }
            )
        else:
            out.append(
                {"correct": counts[0], "valid": counts[1], "value": counts[0] / max(counts[1], 1)}
            )
    return out
