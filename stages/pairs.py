"""Pairs stage: ordered pairs (A, B) of distinct images of one identity whose keypoints
both pass `min_valid_keypoints`, per split; the pairs table plus legacy CSVs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.tables import PAIRS_SCHEMA, identity_group


@dataclass
class PairCounts:
    images: int = 0
    excluded: Counter = field(default_factory=Counter)   # reason -> images
    pairs: dict[str, int] = field(default_factory=dict)  # split -> pairs


def eligible_images(keypoints: pd.DataFrame, min_valid: int) -> tuple[pd.DataFrame, Counter]:
    """Images usable in pairs, and the excluded ones counted by reason."""
    reasons = Counter()
    has_error = keypoints["error"].notna() if "error" in keypoints else pd.Series(False, keypoints.index)
    reasons["keypoint error"] = int(has_error.sum())
    too_few = ~has_error & (keypoints["n_valid"] < min_valid)
    reasons[f"fewer than {min_valid} valid keypoints"] = int(too_few.sum())
    return keypoints[~has_error & ~too_few], +reasons


def pairs_for_split(images: pd.DataFrame, split: str, max_per_identity: int | None,
                    seed: int) -> pd.DataFrame:
    """All ordered pairs of distinct images per identity folder; optionally a seeded,
    deterministic sample of at most `max_per_identity` pairs per identity."""
    rows = []
    images = images.assign(group=images["path"].map(identity_group)).sort_values("path")
    for group, members in images.groupby("group", sort=True):
        paths = members["path"].tolist()
        fids = members["file_id"].tolist()
        idx = [(a, b) for a in range(len(paths)) for b in range(len(paths)) if a != b]
        if max_per_identity is not None and len(idx) > max_per_identity:
            # Seed per identity so adding identities never changes another's sample.
            rng = np.random.default_rng([seed, *group.encode()])
            keep = np.sort(rng.choice(len(idx), size=max_per_identity, replace=False))
            idx = [idx[i] for i in keep]
        rows += [(paths[a], paths[b], fids[a], fids[b], group, split) for a, b in idx]
    return pd.DataFrame(rows, columns=PAIRS_SCHEMA.names)


def make_pairs(keypoints: pd.DataFrame, splits: dict[str, list[str]], min_valid: int,
               max_per_identity: int | None = None, seed: int = 0) -> tuple[pd.DataFrame, PairCounts]:
    """The pure core: keypoints table + image lists (split -> paths) -> pairs table."""
    counts = PairCounts(images=len(keypoints))
    ok, counts.excluded = eligible_images(keypoints, min_valid)
    frames = []
    for split, paths in splits.items():
        part = pairs_for_split(ok[ok["path"].isin(set(paths))], split, max_per_identity, seed)
        counts.pairs[split] = len(part)
        frames.append(part)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PAIRS_SCHEMA.names)
    return table, counts
