"""The metric registry: every registered metric is whole (kind, note, summary rule, weights,
published file), the summary and the published CSVs follow it, and every metric with a
real target's value by definition reaches it on a real image against itself."""

import numpy as np
import pandas as pd
import pytest

from pipeline.core.config import KeypointsConfig
from pipeline.core.imaging import load_rgb
from pipeline.metrics.registry import (
    BY_DEFINITION,
    KINDS,
    METRICS,
    SPECS,
    MetricSpec,
    build_scorer,
    expand_metrics,
    legacy_files,
    weights_for,
)
from pipeline.metrics.set_scores import mean_std
from pipeline.metrics.summary import (
    LEGACY_COLUMNS,
    LPIPS_LEGACY_COLUMNS,
    PER_IMAGE_SCHEMA,
    legacy_tables,
    summarise,
    wide_legacy_columns,
)

ALL = list(SPECS.values())
NAMES = [s.name for s in ALL]


@pytest.mark.parametrize("spec", ALL, ids=NAMES)
def test_every_metric_has_a_kind_a_note_a_summary_rule_and_a_scorer(spec):
    assert spec.kind in KINDS
    assert spec.note.startswith(("higher is better", "lower is better")), spec.note
    assert callable(spec.summary) and callable(spec.build)
    assert spec.name in expand_metrics([spec.config_name]) and spec.config_name in METRICS
    assert spec.kind != "pixel" or spec.weight is None, "pixel metrics run without a network"
    if spec.legacy_file and len(legacy_files()[spec.legacy_file]) > 1:
        assert spec.legacy_name, "a CSV of several metrics names each one's columns"


def test_the_registry_keeps_the_published_order_and_files():
    assert METRICS == ("ssim", "psnr", "is", "ds", "pckh", "lpips", "fid")
    assert NAMES == ["ssim", "psnr", "is", "ds", "pckh", "lpips_alex", "lpips_vgg",
                     "lpips_squeeze", "fid"]  # fmt: skip
    files = legacy_files()
    assert list(files) == ["ssim_score.csv", "inception_score.csv", "ssd_score.csv",
                           "pckh_score.csv", "lpips_score.csv"]  # fmt: skip
    lpips = [s.legacy_name for s in files["lpips_score.csv"]]
    assert wide_legacy_columns(lpips) == LPIPS_LEGACY_COLUMNS
    by_definition = {s.name: s.real for s in ALL if s.real is not None}
    assert by_definition == {"ssim": 1.0, "psnr": float("inf"), "pckh": 1.0, "lpips_alex": 0.0,
                             "lpips_vgg": 0.0, "lpips_squeeze": 0.0, "fid": 0.0}  # fmt: skip


def rows_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for col in PER_IMAGE_SCHEMA.names:
        if col not in frame.columns:
            frame[col] = None
    return frame


@pytest.fixture(scope="module")
def photos(reference):
    names = ("condition.jpg", "generated.jpg")
    return [np.asarray(load_rgb(reference / "api-test" / n)).copy() for n in names]


SCORED_PAIRS = [s for s in ALL if s.real is not None and s.kind != "image"]


@pytest.mark.parametrize("spec", SCORED_PAIRS, ids=[s.name for s in SCORED_PAIRS])
def test_a_real_image_against_itself_scores_its_value_by_definition(spec, photos):
    # Random networks: a real image against itself is the same however the network is set;
    # PCKh's estimator is BlazePose (it ships in a wheel).
    weights = weights_for(spec.name, "random", None, KeypointsConfig(estimator="mediapipe"))
    rows = rows_frame(build_scorer(spec.name, weights)(photos, photos))
    assert rows["error"].isna().all(), rows["error"]
    score, _ = spec.summary(rows, rows)
    assert score == pytest.approx(spec.real, abs=1e-6)


SCORED_SETS = [s for s in ALL if s.real is not None and s.kind == "image"]


@pytest.mark.parametrize("spec", SCORED_SETS, ids=[s.name for s in SCORED_SETS])
def test_a_real_set_against_itself_scores_its_value_by_definition(spec):
    features = np.random.default_rng(0).normal(size=(12, 6)).astype(np.float32)
    rows = rows_frame([{"features": f} for f in features])
    score, _ = spec.summary(rows, rows)
    assert score == pytest.approx(spec.real, abs=1e-6)


def test_a_registered_metric_reaches_the_summary_and_its_csv(monkeypatch):
    toy = MetricSpec("toy", "pixel", build=lambda weights: None, summary=mean_std,
                     note="higher is better", real=2.0, legacy_file="toy_score.csv")  # fmt: skip
    monkeypatch.setitem(SPECS, "toy", toy)
    pairs = pd.DataFrame({"checkpoint": ["7"] * 4, "direction": ["AB", "AB", "BA", "BA"],
                          "name": ["a", "b", "a", "b"]})  # fmt: skip
    values = [1.0, 3.0, 0.5, 0.5]
    records = zip(pairs.to_dict("records"), values, strict=True)
    table = rows_frame([{**r, "value": v, "error": None} for r, v in records])
    summary = summarise({"toy": table}, {}, pairs, "pretrained")
    got = summary.set_index(["checkpoint", "direction"])
    assert got.loc[("7", "AB"), ["mean", "std", "n"]].tolist() == [2.0, 1.0, 2]
    assert got.loc[("real", "BA"), "mean"] == 2.0
    assert got.loc[("real", "BA"), "reason"] == BY_DEFINITION
    legacy = legacy_tables(summary, {"toy": table})["toy_score.csv"]
    assert list(legacy.columns) == LEGACY_COLUMNS
    assert legacy.iloc[0].tolist() == ["7", 2.0, 0.5, 2.0, 2.0, 2.0, 1.25]
