"""Evaluation tables: the per-image and summary schemas, the per-(checkpoint, direction,
metric) summary, and the published score CSVs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.core.layout import GenerationLayout
from pipeline.core.paths import checkpoint_sort_key
from pipeline.metrics.registry import (
    BASELINES,
    BY_DEFINITION,
    COPY,
    LPIPS_METRICS,
    REAL,
    REAL_BY_DEFINITION,
    SPECS,
)

PER_IMAGE_SCHEMA = pa.schema(
    [
        ("checkpoint", pa.string()),  # checkpoint id, or "real" for the real image set
        ("direction", pa.string()),  # AB (fake_B from A) or BA (fake_A from B)
        ("name", pa.string()),  # <n>@<fid>.jpg, shared by the real and the fake image
        ("real_path", pa.string()),  # relative to the generation root
        ("fake_path", pa.string()),  # relative to the generation root; null for real rows
        ("value", pa.float64()),  # the per-image score; null for set-level metrics
        ("correct", pa.int32()),  # PCKh: correct keypoints
        ("valid", pa.int32()),  # PCKh: valid keypoints of the real image
        ("features", pa.list_(pa.float32())),  # IS: class probabilities; FID: pool3 features
        ("error", pa.string()),  # why the image has no score (null when scored)
        # Digest of the scored files' contents: a score is reused only while it matches.
        ("inputs", pa.string()),
        # Ray node id of the actor or task that scored the row (null in older tables).
        ("node", pa.string()),
    ],
    metadata={"optional": "inputs,node"},
)

SUMMARY_SCHEMA = pa.schema(
    [
        ("checkpoint", pa.string()),
        ("direction", pa.string()),
        ("metric", pa.string()),
        # generated / real (the real targets) / condition (the condition copied: COPY rows)
        ("images", pa.string()),
        ("mean", pa.float64()),  # the score (IS, FID, pooled PCKh: the set-level value)
        ("std", pa.float64()),  # over images (population std as published); null for set scores
        ("n", pa.int64()),  # images counted
        ("errors", pa.int64()),  # images without a score
        ("status", pa.string()),  # ok / skipped
        ("reason", pa.string()),  # why skipped; for a real row: how its score was found
        ("weights", pa.string()),  # pretrained / random (random: not comparable)
    ]
)


LEGACY_COLUMNS = ["iter", "real_A", "fake_A", "real_B", "fake_B", "score_real", "score_fake"]
LPIPS_LEGACY_COLUMNS = [
    "iter",
    "real_A",
    "fake_A_alx",
    "fake_A_vgg",
    "fake_A_sqz",
    "real_B",
    "fake_B_alx",
    "fake_B_vgg",
    "fake_B_sqz",
    "score_real",
    "score_fake_alx",
    "score_fake_vgg",
    "score_fake_sqz",
]
LEGACY_FILES = {
    "ssim": "ssim_score.csv",
    "is": "inception_score.csv",
    "ds": "ssd_score.csv",
    "pckh": "pckh_score.csv",
    "lpips": "lpips_score.csv",
}


def summarise(
    per_image: dict[str, pd.DataFrame],
    skipped: dict[str, str],
    pairs: pd.DataFrame,
    weights_mode: str,
    real_pckh: dict[str, tuple[float, int, int, str]] | None = None,
) -> pd.DataFrame:
    """One row per (checkpoint, direction, metric) with its scale beside it: per direction,
    the real targets (IS and DS computed, PCKh against `real_pckh` {direction: (score,
    counted, not counted, reference)} when given, the rest by definition) and the condition
    copied (COPY rows of the per-image tables)."""
    from pipeline.metrics.fid import fid_from_features
    from pipeline.metrics.inception_score import inception_score
    from pipeline.metrics.pckh import pckh_score

    groups = list(pairs[["checkpoint", "direction"]].drop_duplicates().itertuples(index=False))
    directions = sorted({g.direction for g in groups})
    targets = pairs.drop_duplicates(["direction", "name"]).groupby("direction").size()
    rows = []

    def add(ckpt, direction, metric, images, mean=None, std=None, n=0, errors=0, **why):
        rows.append(
            dict(checkpoint=ckpt, direction=direction, metric=metric, images=images, mean=mean,
                 std=std, n=n, errors=errors, status=why.get("status", "ok"),
                 reason=why.get("reason"), weights=weights_mode)
        )  # fmt: skip

    for metric in SPECS:
        if metric in skipped:
            for g in groups:
                add(g.checkpoint, g.direction, metric, "generated", status="skipped",
                    reason=skipped[metric])  # fmt: skip
            continue
        if metric not in per_image:
            continue
        table = per_image[metric]
        sets = [(g.checkpoint, g.direction, "generated") for g in groups]
        sets += [(COPY, d, "condition") for d in directions if _has(table, COPY, d)]
        if metric in ("is", "ds"):
            sets += [(REAL, d, "real") for d in directions if _has(table, REAL, d)]
        elif metric == "pckh" and real_pckh:
            for d, (score, n, errors, reference) in sorted(real_pckh.items()):
                add(REAL, d, metric, "real", score, None, n, errors,
                    reason=f"estimated, against {reference}")  # fmt: skip
        else:
            for d in directions:
                add(REAL, d, metric, "real", REAL_BY_DEFINITION[metric], None,
                    int(targets.get(d, 0)), reason=BY_DEFINITION)  # fmt: skip
        for ckpt, direction, images in sets:
            part = table[(table["checkpoint"] == ckpt) & (table["direction"] == direction)]
            ok = part[part["error"].isna()]
            n, errors = len(ok), len(part) - len(ok)
            if metric == "is":
                score = inception_score(np.stack(ok["features"].to_list())) if n else None
                add(ckpt, direction, metric, images, score, None, n, errors)
            elif metric == "fid":
                real = table[
                    (table["checkpoint"] == REAL)
                    & (table["direction"] == direction)
                    & table["error"].isna()
                ]
                try:
                    score = fid_from_features(
                        np.stack(real["features"].to_list()), np.stack(ok["features"].to_list())
                    )
                    add(ckpt, direction, metric, images, score, None, n, errors)
                except ValueError as exc:
                    add(ckpt, direction, metric, images, None, None, n, errors, status="skipped",
                        reason=str(exc))  # fmt: skip
            elif metric == "pckh":
                score = pckh_score(ok["correct"].to_numpy(), ok["valid"].to_numpy()) if n else None
                add(ckpt, direction, metric, images, score, None, n, errors)
            else:
                values = ok["value"].to_numpy(np.float64)
                add(ckpt, direction, metric, images, float(values.mean()) if n else None,
                    float(values.std()) if n else None, n, errors)  # fmt: skip
    return pd.DataFrame(rows, columns=SUMMARY_SCHEMA.names)


def _has(table: pd.DataFrame, ckpt: str, direction: str) -> bool:
    return bool(((table["checkpoint"] == ckpt) & (table["direction"] == direction)).any())


def generated_only(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of checkpoints, without the real and condition-copy baselines."""
    return summary[~summary["checkpoint"].isin(BASELINES)]


def _mean_of(summary: pd.DataFrame, ckpt: str, direction: str, metric: str) -> float:
    hit = summary[
        (summary["checkpoint"] == ckpt)
        & (summary["direction"] == direction)
        & (summary["metric"] == metric)
        & (summary["status"] == "ok")
    ]
    return (
        float(hit["mean"].iloc[0]) if len(hit) and pd.notna(hit["mean"].iloc[0]) else float("nan")
    )


def legacy_tables(
    summary: pd.DataFrame, per_image: dict[str, pd.DataFrame]
) -> dict[str, pd.DataFrame]:
    """The published score CSVs, one row per checkpoint (fake_A = direction BA, fake_B = AB).
    A CSV is produced only when all its metrics were scored: a skipped metric leaves it absent."""
    ckpts = sorted(set(generated_only(summary)["checkpoint"]), key=checkpoint_sort_key)
    scored = set(summary.loc[summary["status"] == "ok", "metric"])
    out = {}
    for metric, fname in LEGACY_FILES.items():
        needed = LPIPS_METRICS if metric == "lpips" else (metric,)
        if not all(m in scored for m in needed):
            continue
        rows = []
        for c in ckpts:
            if metric == "lpips":
                a = [_mean_of(summary, c, "BA", m) for m in LPIPS_METRICS]
                b = [_mean_of(summary, c, "AB", m) for m in LPIPS_METRICS]
                rows.append(
                    [c, 0.0, *a, 0.0, *b, 0.0, *((x + y) / 2 for x, y in zip(a, b, strict=True))]
                )
                continue
            fa, fb = _mean_of(summary, c, "BA", metric), _mean_of(summary, c, "AB", metric)
            if metric in ("is", "ds"):
                ra, rb = (
                    _mean_of(summary, REAL, "BA", metric),
                    _mean_of(summary, REAL, "AB", metric),
                )
            else:
                ra = rb = 1.0  # SSIM and PCKh of a real image against itself
            fake = (fa + fb) / 2
            if metric == "pckh":  # pooled over both directions, as published
                t = per_image["pckh"]
                ok = t[(t["checkpoint"] == c) & t["error"].isna()]
                fake = (
                    float(ok["correct"].sum()) / ok["valid"].sum()
                    if ok["valid"].sum()
                    else float("nan")
                )
            rows.append([c, ra, fa, rb, fb, (ra + rb) / 2, fake])
        out[fname] = pd.DataFrame(
            rows, columns=LPIPS_LEGACY_COLUMNS if metric == "lpips" else LEGACY_COLUMNS
        )
    return out


def sort_key(col: pd.Series) -> pd.Series:
    if col.name == "checkpoint":
        return col.map(checkpoint_sort_key)
    if col.name == "name":
        return col.map(GenerationLayout.name_order)
    return col
