"""The metrics the evaluate stage knows, one registered `MetricSpec` each (`register_metric`
on its scorer builder): its name as stored, what it scores, the weights it needs, how its
scorer is built, how its summary comes from the per-image rows, its published CSV, its
report note and the real targets' score by definition. The maths of each metric lives in
its own module beside this one, imported only when a scorer is built (the registry is
read by the config and the CLI, which must not pay for torch)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from pipeline.core.config import KeypointsConfig
from pipeline.core.errors import ConfigError
from pipeline.metrics.set_scores import Score, fid_set, inception_set, mean_std, pooled_pckh

# (real images, fake images or None for image metrics) -> one dict of PER_IMAGE_SCHEMA
# columns per image.
Scorer = Callable[[list[np.ndarray], list[np.ndarray] | None], list[dict]]
KINDS = ("pixel", "pair", "image")
# The weights of PCKh: the configured keypoint estimator, pretrained in either mode.
ESTIMATOR = "keypoint estimator"


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as stored in tables
    kind: str  # pixel: pairs, Ray tasks; pair / image: network on pairs / single images
    build: Callable[[object], Scorer]  # weights (None: random or none needed) -> scorer
    summary: Callable[..., Score]  # set_scores rule: (set rows, real rows) -> (score, std)
    note: str  # the report's note: which way is better, and caveats
    weight: str | None = None  # KNOWN_WEIGHTS name, ESTIMATOR, or None: no network
    real: float | None = None  # the real targets' score by definition; None: scored
    legacy_file: str | None = None  # the published score CSV it goes into
    legacy_name: str | None = None  # its column suffix in a CSV of several metrics
    legacy_pooled: bool = False  # the CSV's score_fake pools both directions' rows
    group: str | None = None  # the name that asks for it with others (lpips)

    @property
    def config_name(self) -> str:
        return self.group or self.name


SPECS: dict[str, MetricSpec] = {}  # by stored name, in registration order (tables, report)


def register_metric(name: str, kind: str, **fields) -> Callable:
    """Register the decorated scorer builder as metric `name` (MetricSpec `fields`)."""

    def register(build: Callable[[object], Scorer]) -> Callable[[object], Scorer]:
        if name in SPECS or kind not in KINDS:
            raise ValueError(f"metric {name!r}: registered twice, or kind {kind!r} unknown")
        SPECS[name] = MetricSpec(name, kind, build, **fields)
        return build

    return register


def _device() -> str:
    from pipeline.cluster.runtime import best_device

    return best_device()


@register_metric(
    "ssim", "pixel", summary=mean_std, real=1.0, legacy_file="ssim_score.csv",
    note="higher is better; skimage structural_similarity, 7x7 uniform window",
)  # fmt: skip
def _ssim(weights) -> Scorer:
    from pipeline.metrics.ssim import ssim_image

    return lambda real, fake: [{"value": ssim_image(a, b)} for a, b in zip(real, fake, strict=True)]


@register_metric(
    "psnr", "pixel", summary=mean_std, real=float("inf"), note="higher is better (dB)"
)  # fmt: skip
def _psnr(weights) -> Scorer:
    from pipeline.metrics.psnr import psnr_batch

    return lambda real, fake: [
        {"value": float(psnr_batch(a[None], b[None])[0])} for a, b in zip(real, fake, strict=True)
    ]


@register_metric(
    "is", "image", summary=inception_set, weight="inception_v3",
    legacy_file="inception_score.csv", note="higher is better; one split, as published (no std)",
)  # fmt: skip
def _inception(weights) -> Scorer:
    from pipeline.metrics.inception_score import build_inception, class_probabilities

    net = build_inception(weights).to(_device())
    return lambda images, _: [{"features": p} for p in class_probabilities(net, images)]


@register_metric(
    "ds", "image", summary=mean_std, weight="ssd300", legacy_file="ssd_score.csv",
    note="higher is better; torchvision SSD300-VGG16 COCO, whereas the published code used "
    "NVIDIA's SSD from torch hub, so values are not directly comparable",
)  # fmt: skip
def _detection(weights) -> Scorer:
    from pipeline.metrics.detection_score import build_ssd, person_scores

    net = build_ssd(weights).to(_device())
    return lambda images, _: [{"value": v} for v in person_scores(net, images)]


# PCKh's real targets: 1 by definition, or measured against the dataset's reference
# keypoints when the evaluate stage has them (summarise's `real_measured`).
@register_metric(
    "pckh", "pair", summary=pooled_pckh, weight=ESTIMATOR, real=1.0,
    legacy_file="pckh_score.csv", legacy_pooled=True,
    note="higher is better; pooled correct / valid keypoints (no std)",
)  # fmt: skip
def _pckh(weights) -> Scorer:  # `weights`: the keypoints config resolve_estimator checked
    from pipeline.metrics.pckh import pckh_rows
    from pipeline.pose.estimator_factory import build_estimator, predict_once_per_image

    predict = predict_once_per_image(build_estimator(weights, device=_device()))
    return lambda real, fake: pckh_rows(predict(real), predict(fake))


# lpips net -> (our weights registry name of its backbone, its short name in the CSV)
LPIPS_NETS = {
    "alex": ("alexnet", "alx"),
    "vgg": ("vgg16", "vgg"),
    "squeeze": ("squeezenet1_1", "sqz"),
}


def _lpips(net: str, weights) -> Scorer:
    from pipeline.metrics.lpips_metric import build_lpips, lpips_distances

    model = build_lpips(net, weights).to(_device())
    return lambda real, fake: [{"value": v} for v in lpips_distances(model, real, fake)]


for _net, (_weight, _short) in LPIPS_NETS.items():
    register_metric(
        f"lpips_{_net}", "pair", summary=mean_std, weight=_weight, real=0.0,
        legacy_file="lpips_score.csv", legacy_name=_short, group="lpips", note="lower is better",
    )(partial(_lpips, _net))  # fmt: skip


@register_metric(
    "fid", "image", summary=fid_set, weight="fid_inception", real=0.0,
    note="lower is better; generated set vs the real targets of the same direction (no std)",
)  # fmt: skip
def _fid(weights) -> Scorer:
    from pipeline.metrics.fid import build_fid_inception, pool3_features

    net = build_fid_inception(weights).to(_device())
    return lambda images, _: [{"features": f} for f in pool3_features(net, images)]


# The names evaluate.metrics and --metrics take: a group stands for all its metrics.
METRICS = tuple(dict.fromkeys(s.config_name for s in SPECS.values()))

REAL = "real"  # checkpoint value of rows scoring the real images (IS, DS, FID)
# Checkpoint value of rows that score the condition image as if it were the generated one:
# what copying the input earns, the floor a generator must beat.
COPY = "copy"
BASELINES = (REAL, COPY)
BY_DEFINITION = "by definition"


def expand_metrics(names: list[str]) -> list[str]:
    """Config names -> stored metric names (lpips -> one per backbone), checked."""
    out = []
    for name in names:
        members = [s.name for s in SPECS.values() if s.config_name == name]
        if members or name in SPECS:
            out += members or [name]
        else:
            raise ConfigError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return list(dict.fromkeys(out))


def legacy_files() -> dict[str, list[MetricSpec]]:
    """Each published score CSV and the metrics it holds, in registration order."""
    out: dict[str, list[MetricSpec]] = {}
    for spec in SPECS.values():
        if spec.legacy_file:
            out.setdefault(spec.legacy_file, []).append(spec)
    return out


def weights_for(metric: str, mode: str, weights_dir: str | None,
                keypoints: KeypointsConfig | None = None):  # fmt: skip
    """The weight file path of a metric's network (None: random or no weights needed); for
    the keypoint estimator (PCKh) the configured one (`keypoints`), resolved, pretrained in
    either mode. Raises WeightsError naming the missing file."""
    from pipeline.core.weights import load_state_dict, require_weight

    spec = SPECS[metric]
    if spec.weight == ESTIMATOR:
        from pipeline.pose.estimator_factory import resolve_estimator

        return resolve_estimator(keypoints or KeypointsConfig(), weights_dir)
    if spec.weight is None or mode == "random":
        return None
    path = require_weight(spec.weight, weights_dir)
    load_state_dict(path)  # an unusable file fails here, naming it, not in every actor
    return str(path)


def build_scorer(metric: str, weights) -> Scorer:
    """The scorer of `metric`: (real images, fake images) -> one dict per image. Image
    metrics score the first list only; `weights` None builds a random network, drawn from
    seed 0 (without touching the caller's random state), so every actor and every run
    builds the same one and a resumed evaluation scores with one network."""
    spec = SPECS[metric]
    if weights is not None or spec.kind == "pixel":
        return spec.build(weights)
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return spec.build(weights)
