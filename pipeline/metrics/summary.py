"""Evaluation tables: the per-image and summary schemas, the per-(checkpoint, direction,
metric) summary, and the published score CSVs, each as the metric registry says."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from pipeline.core.layout import GenerationLayout
from pipeline.core.paths import checkpoint_sort_key
from pipeline.metrics.registry import BASELINES, BY_DEFINITION, COPY, REAL, SPECS, legacy_files
from pipeline.metrics.set_scores import Unscored

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


def summarise(
    per_image: dict[str, pd.DataFrame],
    skipped: dict[str, str],
    pairs: pd.DataFrame,
    weights_mode: str,
    real_measured: dict[str, dict[str, tuple[float, int, int, str]]] | None = None,
) -> pd.DataFrame:
    """One row per (checkpoint, direction, metric) with its scale beside it: per direction,
    the real targets (scored when the metric has no value by definition, measured when
    `real_measured` {metric: {direction: (score, counted, not counted, reference)}} has
    them, else by definition) and the condition copied (COPY rows of the per-image tables).
    Each metric's `summary` rule turns a set's rows into its score."""
    groups = list(pairs[["checkpoint", "direction"]].drop_duplicates().itertuples(index=False))
    directions = sorted({g.direction for g in groups})
    targets = pairs.drop_duplicates(["direction", "name"]).groupby("direction").size()
    measured = real_measured or {}
    rows = []

    def add(ckpt, direction, metric, images, mean=None, std=None, n=0, errors=0, **why):
        rows.append(
            dict(checkpoint=ckpt, direction=direction, metric=metric, images=images, mean=mean,
                 std=std, n=n, errors=errors, status=why.get("status", "ok"),
                 reason=why.get("reason"), weights=weights_mode)
        )  # fmt: skip

    for spec in SPECS.values():
        metric = spec.name
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
        if spec.real is None:  # the real targets are scored like any other set
            sets += [(REAL, d, "real") for d in directions if _has(table, REAL, d)]
        elif metric in measured:
            for d, (score, n, errors, reference) in sorted(measured[metric].items()):
                add(REAL, d, metric, "real", score, None, n, errors,
                    reason=f"estimated, against {reference}")  # fmt: skip
        else:
            for d in directions:
                add(REAL, d, metric, "real", spec.real, None, int(targets.get(d, 0)),
                    reason=BY_DEFINITION)  # fmt: skip
        scored = table[table["error"].isna()]
        real = {d: scored[(scored["checkpoint"] == REAL) & (scored["direction"] == d)]
                for d in directions}  # fmt: skip
        for ckpt, direction, images in sets:
            part = table[(table["checkpoint"] == ckpt) & (table["direction"] == direction)]
            ok = part[part["error"].isna()]
            n, errors = len(ok), len(part) - len(ok)
            try:
                score, std = spec.summary(ok, real[direction])
            except Unscored as exc:
                add(ckpt, direction, metric, images, None, None, n, errors, status="skipped",
                    reason=str(exc))  # fmt: skip
                continue
            add(ckpt, direction, metric, images, score, std, n, errors)
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
    """The published score CSVs (`legacy_files`), one row per checkpoint (fake_A = direction
    BA, fake_B = AB). A CSV is produced only when all its metrics were scored: a skipped
    metric leaves it absent."""
    ckpts = sorted(set(generated_only(summary)["checkpoint"]), key=checkpoint_sort_key)
    scored = set(summary.loc[summary["status"] == "ok", "metric"])
    out = {}
    for fname, specs in legacy_files().items():
        if not all(s.name in scored for s in specs):
            continue
        if len(specs) > 1:
            out[fname] = _wide_legacy(summary, specs, ckpts)
            continue
        spec, rows = specs[0], []
        for c in ckpts:
            fa, fb = _mean_of(summary, c, "BA", spec.name), _mean_of(summary, c, "AB", spec.name)
            if spec.real is None:  # scored on the real targets
                ra, rb = (_mean_of(summary, REAL, d, spec.name) for d in ("BA", "AB"))
            else:  # a real image against itself
                ra = rb = spec.real
            fake = (fa + fb) / 2
            if spec.legacy_pooled:  # pooled over both directions, as published
                t = per_image[spec.name]
                pooled = spec.summary(t[(t["checkpoint"] == c) & t["error"].isna()], t[:0])[0]
                fake = float("nan") if pooled is None else pooled
            rows.append([c, ra, fa, rb, fb, (ra + rb) / 2, fake])
        out[fname] = pd.DataFrame(rows, columns=LEGACY_COLUMNS)
    return out


def wide_legacy_columns(short: list[str]) -> list[str]:
    """The columns of a CSV of several metrics (`short`: their legacy_name suffixes)."""
    return ["iter", "real_A", *(f"fake_A_{s}" for s in short), "real_B",
            *(f"fake_B_{s}" for s in short), "score_real",
            *(f"score_fake_{s}" for s in short)]  # fmt: skip


def _wide_legacy(summary: pd.DataFrame, specs: list, ckpts: list[str]) -> pd.DataFrame:
    """One CSV of several metrics (LPIPS' backbones): per checkpoint each one's mean per
    direction and their average; the real columns hold the value by definition."""
    real, rows = specs[0].real, []
    for c in ckpts:
        a = [_mean_of(summary, c, "BA", s.name) for s in specs]
        b = [_mean_of(summary, c, "AB", s.name) for s in specs]
        rows.append(
            [c, real, *a, real, *b, real, *((x + y) / 2 for x, y in zip(a, b, strict=True))]
        )
    return pd.DataFrame(rows, columns=wide_legacy_columns([s.legacy_name for s in specs]))


def sort_key(col: pd.Series) -> pd.Series:
    if col.name == "checkpoint":
        return col.map(checkpoint_sort_key)
    if col.name == "name":
        return col.map(GenerationLayout.name_order)
    return col
