"""Evaluate stage: score every checkpoint of a published-layout generation directory with
SSIM, PSNR, IS, DS, PCKh, LPIPS and FID; per-image Parquet, per-(checkpoint, direction,
metric) summaries, the published legacy CSVs. Pixel metrics run as Ray tasks over batches,
network metrics in Ray actor pools (one GPU per actor when the cluster has GPUs)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.config import Config
from pipeline.errors import ConfigError, DataError, WeightsError
from pipeline.layout import (
    PAIRS_INDEX_SCHEMA,
    EvaluationLayout,
    GenerationLayout,
    OutputLayout,
    scan_generation,
)
from pipeline.runtime import StageResult, init_ray, package_versions
from pipeline.tables import checkpoint_sort_key, read_table, write_csv, write_table
from stages.spec import StageSpec

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
    ]
)

SUMMARY_SCHEMA = pa.schema(
    [
        ("checkpoint", pa.string()),
        ("direction", pa.string()),
        ("metric", pa.string()),
        ("images", pa.string()),  # generated / real
        ("mean", pa.float64()),  # the score (IS, FID, pooled PCKh: the set-level value)
        ("std", pa.float64()),  # over images (population std as published); null for set scores
        ("n", pa.int64()),  # images counted
        ("errors", pa.int64()),  # images without a score
        ("status", pa.string()),  # ok / skipped
        ("reason", pa.string()),  # why skipped
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


# --- the generation layout ------------------------------------------------------------


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


def real_images(pairs: pd.DataFrame) -> pd.DataFrame:
    """The real target images per direction (scored once, not per checkpoint)."""
    ok = pairs[pairs["error"].isna()]
    return ok.drop_duplicates(["direction", "name"])[["direction", "name", "real_path"]].assign(
        checkpoint=REAL, fake_path=None
    )


# --- scoring (pure, run inside Ray tasks and actors) ----------------------------------


def load_image(gen_root: str, rel: str) -> np.ndarray:
    from pipeline.imaging import load_rgb

    return np.array(
        load_rgb(Path(gen_root) / rel)
    )  # a writable copy: torch refuses read-only arrays


def _load_pairs(gen_root: str, rows: list[dict]) -> tuple[list, list, dict[int, str]]:
    """Real and fake images of `rows`; failures are returned by row position."""
    from pipeline.imaging import ImageError

    real, fake, errors = [], [], {}
    for i, r in enumerate(rows):
        try:
            a, b = load_image(gen_root, r["real_path"]), load_image(gen_root, r["fake_path"])
            if a.shape != b.shape:
                raise ImageError(
                    f"real {a.shape[1]}x{a.shape[0]} and generated "
                    f"{b.shape[1]}x{b.shape[0]} differ in size"
                )
            real.append(a)
            fake.append(b)
        except ImageError as exc:
            errors[i] = f"{r['fake_path']}: {exc}"
    return real, fake, errors


def _with_errors(rows: list[dict], errors: dict[int, str], scored: list[dict]) -> list[dict]:
    """Merge scores of the loadable rows with error rows, in the order of `rows`."""
    it = iter(scored)
    out = []
    for i, r in enumerate(rows):
        out.append({**r, "error": errors[i]} if i in errors else {**r, **next(it)})
    return out


def score_pixel_batch(gen_root: str, rows: list[dict], metrics: list[str]) -> dict[str, list[dict]]:
    """SSIM and/or PSNR for a batch of pairs -> metric -> rows with `value` or `error`."""
    from pipeline.metrics.psnr import psnr_batch
    from pipeline.metrics.ssim import ssim_image

    real, fake, errors = _load_pairs(gen_root, rows)
    out = {}
    for metric in metrics:
        if metric == "ssim":
            values = [ssim_image(a, b) for a, b in zip(real, fake, strict=True)]
        else:
            values = [
                float(psnr_batch(a[None], b[None])[0]) for a, b in zip(real, fake, strict=True)
            ]
        out[metric] = _with_errors(rows, errors, [{"value": v} for v in values])
    return out


def build_scorer(
    metric: str, weights: str | None
) -> Callable[[list[np.ndarray], list[np.ndarray] | None], list[dict]]:
    """The network scorer of `metric`: (real images, fake images) -> one dict per image.
    Image metrics score the first list only; `weights` None builds a random network."""
    from pipeline.runtime import best_device

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
        from pipeline.estimators import build_estimator

        estimator = build_estimator(weights, device=device)
        return lambda real, fake: pckh_rows(estimator.predict(real), estimator.predict(fake))
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


def score_network_batch(scorer: Callable, gen_root: str, rows: list[dict], kind: str) -> list[dict]:
    """Load a batch and score it: pairs for pair metrics, single images for image metrics
    (the fake image, or the real one for rows of the real set)."""
    from pipeline.imaging import ImageError

    if kind == "pair":
        real, fake, errors = _load_pairs(gen_root, rows)
        return _with_errors(rows, errors, scorer(real, fake) if real else [])
    images, errors = [], {}
    for i, r in enumerate(rows):
        rel = r["fake_path"] if r["fake_path"] else r["real_path"]
        try:
            images.append(load_image(gen_root, rel))
        except ImageError as exc:
            errors[i] = f"{rel}: {exc}"
    return _with_errors(rows, errors, scorer(images, None) if images else [])


class MetricActor:
    """Holds one metric's network; built once per actor (Ray Data's callable-class shape)."""

    def __init__(self, metric: str, weights: str | None):
        import ray
        import torch

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))
        self.kind = SPECS[metric].kind
        self.error = None
        try:
            self.scorer = build_scorer(metric, weights)
        except WeightsError as exc:  # missing or unusable weights: the metric's skip reason
            self.error = str(exc)

    def ready(self) -> str | None:
        return self.error

    def score(self, gen_root: str, rows: list[dict]) -> list[dict]:
        return score_network_batch(self.scorer, gen_root, rows, self.kind)


# --- summaries and legacy CSVs --------------------------------------------------------


def summarise(
    per_image: dict[str, pd.DataFrame],
    skipped: dict[str, str],
    pairs: pd.DataFrame,
    weights_mode: str,
) -> pd.DataFrame:
    """One row per (checkpoint, direction, metric) and, for IS and DS, the real sets."""
    from pipeline.metrics.fid import fid_from_features
    from pipeline.metrics.inception_score import inception_score
    from pipeline.metrics.pckh import pckh_score

    groups = pairs[["checkpoint", "direction"]].drop_duplicates().itertuples(index=False)
    groups = list(groups)
    rows = []

    def add(
        ckpt,
        direction,
        metric,
        images,
        mean=None,
        std=None,
        n=0,
        errors=0,
        status="ok",
        reason=None,
    ):
        rows.append(
            dict(
                checkpoint=ckpt,
                direction=direction,
                metric=metric,
                images=images,
                mean=mean,
                std=std,
                n=n,
                errors=errors,
                status=status,
                reason=reason,
                weights=weights_mode,
            )
        )

    for metric in SPECS:
        if metric in skipped:
            for g in groups:
                add(
                    g.checkpoint,
                    g.direction,
                    metric,
                    "generated",
                    status="skipped",
                    reason=skipped[metric],
                )
            continue
        if metric not in per_image:
            continue
        table = per_image[metric]
        sets = [(g.checkpoint, g.direction, "generated") for g in groups]
        if metric in ("is", "ds"):
            sets += [
                (REAL, d, "real")
                for d in sorted(table.loc[table["checkpoint"] == REAL, "direction"].unique())
            ]
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
                    add(ckpt, direction, metric, images, None, None, n, errors, "skipped", str(exc))
            elif metric == "pckh":
                score = pckh_score(ok["correct"].to_numpy(), ok["valid"].to_numpy()) if n else None
                add(ckpt, direction, metric, images, score, None, n, errors)
            else:
                values = ok["value"].to_numpy(np.float64)
                add(
                    ckpt,
                    direction,
                    metric,
                    images,
                    float(values.mean()) if n else None,
                    float(values.std()) if n else None,
                    n,
                    errors,
                )
    return pd.DataFrame(rows, columns=SUMMARY_SCHEMA.names)


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
    ckpts = sorted(
        set(summary.loc[summary["checkpoint"] != REAL, "checkpoint"]), key=checkpoint_sort_key
    )
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


# --- the Ray wrapper ------------------------------------------------------------------


def _load_done(path: Path) -> pd.DataFrame:
    if path.exists():
        return read_table(path, PER_IMAGE_SCHEMA)
    return PER_IMAGE_SCHEMA.empty_table().to_pandas()


def _pending(units: pd.DataFrame, done: pd.DataFrame) -> list[dict]:
    """Units (checkpoint, direction, name) not scored yet: a rerun resumes."""
    keys = set(zip(done["checkpoint"], done["direction"], done["name"], strict=True))
    cols = ["checkpoint", "direction", "name", "real_path", "fake_path"]
    return [
        r
        for r in units[cols].to_dict("records")
        if (r["checkpoint"], r["direction"], r["name"]) not in keys
    ]


def _rows_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for col in PER_IMAGE_SCHEMA.names:
        if col not in frame.columns:
            frame[col] = None
    return frame[PER_IMAGE_SCHEMA.names]


class _Collector:
    """Accumulates scored rows of one metric and writes the table atomically now and then,
    so an interrupted run keeps what it scored."""

    def __init__(self, path: Path, done: pd.DataFrame, flush_s: float = 30.0):
        self.path, self.frames, self.flush_s, self.last = path, [done], flush_s, time.time()

    def add(self, rows: list[dict]) -> None:
        self.frames.append(_rows_frame(rows))
        if time.time() - self.last > self.flush_s:
            self.write()

    def write(self) -> pd.DataFrame:
        frames = [f for f in self.frames if len(f)]
        table = pd.concat(frames, ignore_index=True) if frames else _rows_frame([])
        table = table.sort_values(["checkpoint", "direction", "name"], key=_sort_key).reset_index(
            drop=True
        )
        write_table(table, self.path, PER_IMAGE_SCHEMA)
        self.frames, self.last = [table], time.time()
        return table


def _sort_key(col: pd.Series) -> pd.Series:
    if col.name == "checkpoint":
        return col.map(checkpoint_sort_key)
    if col.name == "name":
        return col.map(GenerationLayout.name_order)
    return col


def _batches(rows: list[dict], size: int) -> list[list[dict]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _run_pixel_metrics(metrics, gen_root, pairs, paths, batch_size) -> dict[str, pd.DataFrame]:
    import ray
    from tqdm import tqdm

    collectors, pending = {}, {}
    ok = pairs[pairs["error"].isna()]
    for m in metrics:
        done = _load_done(paths.per_image(m))
        collectors[m] = _Collector(paths.per_image(m), done)
        pending[m] = {(r["checkpoint"], r["direction"], r["name"]): r for r in _pending(ok, done)}
    todo = {k: r for m in metrics for k, r in pending[m].items()}
    task = ray.remote(num_cpus=1)(score_pixel_batch)
    refs = [
        task.remote(str(gen_root), batch, list(metrics))
        for batch in _batches(list(todo.values()), batch_size)
    ]
    with tqdm(total=len(todo), desc="ssim/psnr", unit="pair") as bar:
        while refs:
            ready, refs = ray.wait(refs, num_returns=1)
            result = ray.get(ready[0])
            for m, rows in result.items():
                collectors[m].add(
                    [r for r in rows if (r["checkpoint"], r["direction"], r["name"]) in pending[m]]
                )
            bar.update(len(next(iter(result.values()))))
    return {m: c.write() for m, c in collectors.items()}


def _run_network_metric(
    metric, weights, gen_root, units, paths, cfg
) -> tuple[pd.DataFrame | None, str | None]:
    """Score `units` with an actor pool; (table, None), or (None, reason) when the network
    cannot be built (missing weights, missing estimator)."""
    import ray
    from ray.util import ActorPool
    from tqdm import tqdm

    from pipeline.runtime import available_gpus, largest_node_cpus

    collector = _Collector(paths.per_image(metric), _load_done(paths.per_image(metric)))
    todo = _pending(units, collector.frames[0])
    if not todo:
        return collector.write(), None
    gpus = available_gpus()
    if gpus:
        n_actors, opts = gpus, {"num_gpus": 1, "num_cpus": 1}
    else:
        # An actor fits on one node: never more CPUs than the largest node has.
        cpus = int(ray.available_resources().get("CPU", 1)) or 1
        n_actors = min(cfg.evaluate.concurrency or 1, cpus)
        opts = {"num_cpus": max(1, min(cpus // n_actors, largest_node_cpus()))}
    remote = ray.remote(**opts)(MetricActor)
    actors = [remote.remote(metric, weights) for _ in range(n_actors)]
    errors = [e for e in ray.get([a.ready.remote() for a in actors]) if e]
    if errors:
        for a in actors:
            ray.kill(a)
        return None, errors[0]
    pool = ActorPool(actors)
    batches = _batches(todo, cfg.evaluate.batch_size)
    with tqdm(total=len(todo), desc=metric, unit="img") as bar:
        for rows in pool.map_unordered(lambda a, b: a.score.remote(str(gen_root), b), batches):
            collector.add(rows)
            bar.update(len(rows))
    for a in actors:
        ray.kill(a)
    return collector.write(), None


def weights_for(metric: str, mode: str, weights_dir: str | None, keypoints=None):
    """The weight file path of a metric's network (None: random or no weights needed); for
    PCKh the configured keypoint estimator (`keypoints`), resolved, pretrained in either
    mode. Raises WeightsError naming the missing file."""
    from pipeline.weights import require_weight

    spec = SPECS[metric]
    if metric == "pckh":
        from pipeline.config import KeypointsConfig
        from pipeline.estimators import resolve_estimator

        return resolve_estimator(keypoints or KeypointsConfig(), weights_dir)
    if spec.weight is None or mode == "random":
        return None
    return str(require_weight(spec.weight, weights_dir))


def checkpoint_files(ckpts: list[str], cfg: Config) -> dict[str, dict]:
    """netG_<ckpt>.pth of each scored checkpoint where it can be found, with its sha256."""
    from pipeline.weights import file_sha256

    dirs = [d for d in (cfg.weights.checkpoint_dir, OutputLayout(cfg.output.root).checkpoints) if d]
    out = {}
    for c in ckpts:
        for d in dirs:
            path = Path(d) / f"netG_{c}.pth"
            if path.is_file():
                out[c] = {"path": str(path.resolve()), "sha256": file_sha256(path)}
                break
    return out


def check_save_modes(modes: dict[str, str], paths: EvaluationLayout, allow_mixed: bool) -> None:
    """Refuse one table over images saved in different modes (unless `allow_mixed`: then the
    outputs say so), and a resumed evaluation whose kept scores came from another mode."""
    from pipeline.save_modes import mixed_modes_message

    mixed = mixed_modes_message(modes)
    if mixed and not allow_mixed:
        raise click.UsageError(
            f"{mixed}. Evaluate each save mode into its own --out, or pass "
            "--allow-mixed-save-modes to score them together (flagged "
            "everywhere)."
        )
    kept = {}
    if paths.meta.exists():
        kept = json.loads(paths.meta.read_text()).get("save_modes", {})
    changed = {c: (kept[c], m) for c, m in modes.items() if c in kept and kept[c] != m}
    if changed:
        listed = ", ".join(f"{c}: {old} -> {new}" for c, (old, new) in changed.items())
        raise click.UsageError(
            f"{paths.root} keeps scores of images saved in another mode "
            f"({listed}); resuming would mix them. Use a new --out or delete "
            "that directory."
        )


def run_evaluate(
    cfg: Config,
    generated: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    metrics: list[str] | None = None,
    allow_mixed_save_modes: bool = False,
) -> StageResult:
    """Score a published-layout generation directory into `out` (default O/evaluation)."""
    from pipeline.save_modes import checkpoint_save_modes, overall_save_mode, save_mode_text

    outputs = OutputLayout(cfg.output.root)
    gen_root = Path(generated or outputs.generated).resolve()
    paths = EvaluationLayout(out or outputs.evaluation)
    names = expand_metrics(metrics or cfg.evaluate.metrics)
    mode = cfg.evaluate.network_weights
    result = StageResult("evaluate")
    pairs = scan_generation(gen_root)
    if pairs.empty:
        raise DataError(
            f"{gen_root}: no generated images under fake_images/iter_<ckpt>/fake_{{A,B}}/"
        )
    result.rows_in = len(pairs)
    result.errors = int(pairs["error"].notna().sum())
    ckpts = sorted(pairs["checkpoint"].unique(), key=checkpoint_sort_key)
    modes = checkpoint_save_modes(gen_root, ckpts)
    check_save_modes(modes, paths, allow_mixed_save_modes)
    init_ray(cfg.ray)
    paths.root.mkdir(parents=True, exist_ok=True)
    write_table(pairs, paths.pairs, PAIRS_INDEX_SCHEMA)

    per_image: dict[str, pd.DataFrame] = {}
    skipped: dict[str, str] = {}
    pixel = [m for m in names if SPECS[m].kind == "pixel"]
    if pixel:
        per_image.update(
            _run_pixel_metrics(pixel, gen_root, pairs, paths, cfg.evaluate.pixel_batch_size)
        )
    ok_pairs = pairs[pairs["error"].isna()]
    for metric in (m for m in names if SPECS[m].kind != "pixel"):
        try:
            weights = weights_for(metric, mode, cfg.weights.dir, cfg.keypoints)
        except WeightsError as exc:
            skipped[metric] = str(exc)
            continue
        units = ok_pairs
        if SPECS[metric].kind == "image":
            units = pd.concat([ok_pairs, real_images(pairs)], ignore_index=True)
        table, reason = _run_network_metric(metric, weights, gen_root, units, paths, cfg)
        if reason:
            skipped[metric] = reason
        else:
            per_image[metric] = table

    summary = summarise(per_image, skipped, ok_pairs if len(ok_pairs) else pairs, mode)
    write_table(summary, paths.summary, SUMMARY_SCHEMA)
    legacy = legacy_tables(summary, per_image)
    for fname in LEGACY_FILES.values():
        if fname in legacy:
            write_csv(legacy[fname], paths.root / fname, list(legacy[fname].columns))
        elif (paths.root / fname).exists():
            (paths.root / fname).unlink()  # a stale CSV would contradict the skip
    meta = {
        "generated": str(gen_root),
        "metrics": names,
        "network_weights": mode,
        "skipped": skipped,
        "checkpoints": ckpts,
        "checkpoint_files": checkpoint_files(ckpts, cfg),
        "save_mode": overall_save_mode(modes),
        "save_modes": modes,
        "save_mode_text": save_mode_text(modes),
        "config_hash": cfg.hash(),
        "evaluate_config": cfg.to_dict()["evaluate"],
        "packages": package_versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    from pipeline.tables import write_bytes_atomic

    write_bytes_atomic(paths.meta, json.dumps(meta, indent=2).encode())
    result.rows_out = int(sum(len(t) for t in per_image.values()))
    result.skipped = len(skipped)
    result.outputs = {
        "summary": str(paths.summary),
        "per_image": str(paths.root / "per_image"),
        "meta": str(paths.meta),
        **{f: str(paths.root / f) for f in legacy},
    }
    result.notes = [f"images: {save_mode_text(modes)}"]
    result.notes += [f"{m} skipped: {r}" for m, r in skipped.items()]
    if mode == "random":
        result.notes.append("network metrics used RANDOM weights: their scores are not meaningful")
    return result.finish()


STAGE = StageSpec(
    name="evaluate",
    version=1,
    run=lambda cfg, fresh: run_evaluate(cfg),
    config_keys=("evaluate.metrics", "evaluate.network_weights", "keypoints.checkpoint"),
    inputs=lambda cfg: [OutputLayout(cfg.output.root).generated],
    outputs=lambda cfg: [EvaluationLayout(OutputLayout(cfg.output.root).evaluation).summary],
    previous=lambda cfg: [OutputLayout(cfg.output.root).evaluation],
)


class MetricList(click.ParamType):
    """Comma-separated metric names, each one of METRICS."""

    name = "METRIC[,METRIC...]"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        names = [m.strip() for m in value.split(",") if m.strip()]
        unknown = [m for m in names if m not in METRICS]
        if unknown or not names:
            self.fail(
                f"{', '.join(map(repr, unknown)) or 'nothing'} given; choose from "
                f"{', '.join(METRICS)}",
                param,
                ctx,
            )
        return names


@click.command("evaluate")
@click.option(
    "--generated",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Generation directory in the published layout (default: <output.root>/generated).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Where tables and CSVs go (default: <output.root>/evaluation).",
)
@click.option(
    "--metrics",
    type=MetricList(),
    default=None,
    help=f"Comma-separated subset of {','.join(METRICS)} (default: evaluate.metrics).",
)
@click.option(
    "--weights",
    "network_weights",
    type=click.Choice(["pretrained", "random"]),
    default=None,
    help="Network weights: pretrained (default) or random (tests/benchmarks; scores meaningless).",
)
@click.option(
    "--allow-mixed-save-modes",
    is_flag=True,
    help="Score checkpoints whose images were saved in different modes (published / "
    "default, see generate --minmax) in one table; refused without this flag.",
)
@click.pass_obj
def evaluate_command(obj, generated, out, metrics, network_weights, allow_mixed_save_modes) -> None:
    """Score generated images: SSIM, PSNR, IS, DS, PCKh, LPIPS, FID for every checkpoint.

    \b
    Input: real_images/real_{A,B}/<n>@<fid>.jpg and fake_images/iter_<ckpt>/fake_{A,B}/<n>@<fid>.jpg
    (the published test layout; real and generated matched by file name).
    Output in OUT:
      per_image/<metric>.parquet    per-image scores (resume: scored images are kept)
      summary.parquet               mean, std, n per checkpoint, direction, metric
                                    (+ skipped reasons)
      ssim_score.csv inception_score.csv ssd_score.csv pckh_score.csv lpips_score.csv
                                    published columns; absent when the metric was skipped
      evaluation.json               skipped metrics and reasons, images' save mode, provenance
    The save mode of each checkpoint's images comes from generate's generation.json
    (published: the published test script's images; default: (x+1)/2 at quality 95, not
    comparable with published numbers; unknown: no record). Mixed modes are refused unless
    --allow-mixed-save-modes.
    A metric whose weights are missing is skipped with the reason (see `weights status`).
    Example: run_pipeline.py evaluate --generated out/demo/generated \\
             --out out/demo/evaluation --metrics ssim,psnr
    """
    import dataclasses

    cfg = obj.cfg
    if network_weights:
        cfg = dataclasses.replace(
            cfg, evaluate=dataclasses.replace(cfg.evaluate, network_weights=network_weights)
        )
    result = run_evaluate(
        cfg,
        generated=generated,
        out=out,
        metrics=metrics,
        allow_mixed_save_modes=allow_mixed_save_modes,
    )
    click.echo(result.summary())
    for name, path in result.outputs.items():
        click.echo(f"  {name}: {path}")
