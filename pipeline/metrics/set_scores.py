"""How a metric's summary score comes from its per-image rows: each rule takes the scored
rows of one set (a checkpoint, the condition copied or the real targets, in one direction)
and the scored real-target rows of that direction, and returns (score, std over images);
std is None for set-level scores. A set the rule cannot score raises `Unscored` with the
reason, which the summary row keeps."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

Score = tuple[float | None, float | None]


class Unscored(Exception):
    """The set has no score (too few images for a covariance, say); str: why."""


def mean_std(rows: pd.DataFrame, real: pd.DataFrame) -> Score:
    """Per-image scores: their mean and population std (as published)."""
    if not len(rows):
        return None, None
    values = rows["value"].to_numpy(np.float64)
    return float(values.mean()), float(values.std())


def inception_set(rows: pd.DataFrame, real: pd.DataFrame) -> Score:
    """IS over the set's class probabilities (one split, no std)."""
    from pipeline.metrics.inception_score import inception_score

    if not len(rows):
        return None, None
    return inception_score(np.stack(rows["features"].to_list())), None


def fid_set(rows: pd.DataFrame, real: pd.DataFrame) -> Score:
    """FID between the set's pool3 features and the real targets' of its direction."""
    from pipeline.metrics.fid import fid_from_features

    try:
        real_features = np.stack(real["features"].to_list())
        return fid_from_features(real_features, np.stack(rows["features"].to_list())), None
    except ValueError as exc:
        raise Unscored(str(exc)) from exc


def pooled_pckh(rows: pd.DataFrame, real: pd.DataFrame) -> Score:
    """PCKh pooled over the set: total correct / total valid keypoints (no std)."""
    from pipeline.metrics.pckh import pckh_score

    if not len(rows):
        return None, None
    return pckh_score(rows["correct"].to_numpy(), rows["valid"].to_numpy()), None
