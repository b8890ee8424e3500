"""Evaluate stage on a small published-layout directory built from the synthetic tree."""

import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from published_layout import corrupt, write_published_layout
from skimage.metrics import structural_similarity

from pipeline.core.atomic_io import read_table, write_table
from pipeline.core.config import load_config
from pipeline.core.imaging import load_rgb
from pipeline.core.layout import scan_generation
from pipeline.metrics.summary import LEGACY_COLUMNS, LPIPS_LEGACY_COLUMNS, PER_IMAGE_SCHEMA
from stages.evaluate import run_evaluate


@pytest.fixture(scope="module")
def generated(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    write_published_layout(synth_root, out, {"500": 20.0, "1000": 6.0}, max_pairs=4)
    corrupt(
        out
        / "fake_images"
        / "iter_500"
        / "fake_B"
        / sorted(p.name for p in (out / "fake_images" / "iter_500" / "fake_B").iterdir())[0]
    )
    return out


def _cfg(tmp_path, **evaluate):
    sets = ["ray.num_cpus=2", f"output.root={tmp_path}", "evaluate.pixel_batch_size=3"]
    sets += [f"evaluate.{k}={v}" for k, v in evaluate.items()]
    return load_config(None, sets)


def test_scan_matches_real_and_fake_by_name(generated, tmp_path):
    pairs = scan_generation(generated)
    assert len(pairs) == 2 * 2 * 4 and pairs["error"].isna().all()
    row = pairs[(pairs["checkpoint"] == "1000") & (pairs["direction"] == "AB")].iloc[0]
    assert row["fake_path"].endswith(f"iter_1000/fake_B/{row['name']}")
    assert row["real_path"] == f"real_images/real_B/{row['name']}"
    assert row["condition_path"].startswith(f"real_images/real_A/{row['index']}@")
    copy = tmp_path / "gen"
    shutil.copytree(generated, copy)
    (copy / "real_images" / "real_A" / row["condition_path"].split("/")[-1]).rename(
        copy / "stray.jpg"
    )
    broken = scan_generation(copy)
    assert (
        broken["error"].str.contains("no real image real_images/real_A").sum() == 2
    )  # BA of both checkpoints


def test_pixel_metrics_tables_and_legacy_csv(generated, tmp_path, ray_session):
    out = tmp_path / "eval"
    result = run_evaluate(
        _cfg(tmp_path), generated=generated, out=out, metrics=["ssim", "psnr", "is"]
    )
    ssim = read_table(out / "per_image" / "ssim.parquet", PER_IMAGE_SCHEMA)
    # 16 generated images and, per direction, the 4 conditions copied as the floor.
    assert len(ssim) == 16 + 8 and ssim["error"].notna().sum() == 1  # the truncated image
    copies = ssim[ssim["checkpoint"] == "copy"]
    assert len(copies) == 8 and copies["fake_path"].str.startswith("real_images/").all()
    row = copies[copies["direction"] == "AB"].iloc[0]
    assert row["real_path"].startswith("real_images/real_B/")
    assert row["fake_path"].startswith("real_images/real_A/")
    real, cond = (np.asarray(load_rgb(generated / row[c])) for c in ("real_path", "fake_path"))
    assert row["value"] == pytest.approx(
        structural_similarity(real, cond, channel_axis=-1), abs=1e-6
    )
    assert "not a readable image" in ssim["error"].dropna().iloc[0]
    ok = ssim[ssim["error"].isna()].iloc[3]
    real, fake = (np.asarray(load_rgb(generated / ok[c])) for c in ("real_path", "fake_path"))
    assert ok["value"] == pytest.approx(
        structural_similarity(real, fake, channel_axis=-1), abs=1e-6
    )

    summary = pd.read_parquet(out / "summary.parquet")
    s = summary[
        (summary["metric"] == "ssim")
        & (summary["checkpoint"] == "1000")
        & (summary["direction"] == "AB")
    ].iloc[0]
    part = ssim[(ssim["checkpoint"] == "1000") & (ssim["direction"] == "AB")]["value"]
    assert (s["mean"], s["std"], s["n"]) == (
        pytest.approx(part.mean()),
        pytest.approx(part.std(ddof=0)),
        4,
    )
    mean_of = summary.set_index(["checkpoint", "direction", "metric"])["mean"]
    assert (
        mean_of[("1000", "AB", "ssim")] > mean_of[("500", "AB", "ssim")]
    )  # less noise, higher SSIM
    # The scale beside them: the real targets by definition, the condition copied scored.
    assert mean_of[("real", "AB", "ssim")] == 1.0 and mean_of[("real", "BA", "psnr")] == np.inf
    assert mean_of[("copy", "AB", "ssim")] == pytest.approx(
        copies.loc[copies["direction"] == "AB", "value"].mean()
    )
    # The fixture's generated images are noisy copies of the real targets: above the floor.
    assert mean_of[("1000", "AB", "ssim")] > mean_of[("copy", "AB", "ssim")]

    # IS needs inception weights, missing here: skipped with the reason everywhere, never 0.
    skipped = summary[summary["metric"] == "is"]
    assert (skipped["status"] == "skipped").all() and skipped["mean"].isna().all()
    assert skipped["reason"].str.contains("inception_v3_google-0cc3c7bd.pth").all()
    assert not (out / "inception_score.csv").exists()
    assert any("is skipped" in n for n in result.notes)

    legacy = pd.read_csv(out / "ssim_score.csv")
    assert list(legacy.columns) == LEGACY_COLUMNS
    assert legacy["iter"].tolist() == [500, 1000]
    row = legacy.iloc[1]
    assert row["fake_B"] == pytest.approx(mean_of[("1000", "AB", "ssim")])
    assert row["fake_A"] == pytest.approx(mean_of[("1000", "BA", "ssim")])
    assert row["score_fake"] == pytest.approx((row["fake_A"] + row["fake_B"]) / 2)
    assert row["real_A"] == row["score_real"] == 1.0


def test_resume_keeps_scored_rows(generated, tmp_path, ray_session):
    out = tmp_path / "eval"
    cfg = _cfg(tmp_path)
    run_evaluate(cfg, generated=generated, out=out, metrics=["psnr"])
    path = out / "per_image" / "psnr.parquet"
    first = read_table(path, PER_IMAGE_SCHEMA)
    # A sentinel in one scored row survives a rerun (not recomputed); a dropped row is rescored.
    edited = first.copy()
    edited.loc[0, "value"] = -123.0
    dropped = edited.iloc[1]
    write_table(edited.drop(index=1), path, PER_IMAGE_SCHEMA)
    run_evaluate(cfg, generated=generated, out=out, metrics=["psnr"])
    second = read_table(path, PER_IMAGE_SCHEMA)
    assert len(second) == len(first)
    assert second.loc[0, "value"] == -123.0
    again = second[
        (second["checkpoint"] == dropped["checkpoint"])
        & (second["name"] == dropped["name"])
        & (second["direction"] == dropped["direction"])
    ]
    assert again["value"].iloc[0] == pytest.approx(first.loc[1, "value"])


@pytest.mark.slow
def test_lpips_with_random_backbones_in_actor_pool(generated, tmp_path, ray_session):
    out = tmp_path / "eval"
    run_evaluate(
        _cfg(tmp_path, network_weights="random"), generated=generated, out=out, metrics=["lpips"]
    )
    summary = pd.read_parquet(out / "summary.parquet")
    assert set(summary["metric"]) == {"lpips_alex", "lpips_vgg", "lpips_squeeze"}
    assert (summary["status"] == "ok").all() and (summary["weights"] == "random").all()
    real = summary["checkpoint"] == "real"
    assert (summary.loc[real, "mean"] == 0).all() and (
        summary.loc[real, "reason"] == "by definition"
    ).all()
    assert (summary.loc[~real, "mean"] > 0).all()
    legacy = pd.read_csv(out / "lpips_score.csv")
    assert list(legacy.columns) == LPIPS_LEGACY_COLUMNS and len(legacy) == 2
    assert (legacy["real_A"] == 0.0).all()


@pytest.mark.slow
def test_set_metrics_with_random_networks(synth_root, tmp_path, ray_session):
    gen = tmp_path / "gen"
    write_published_layout(synth_root, gen, {"7": 10.0}, max_pairs=2)
    out = tmp_path / "eval"
    cfg = _cfg(tmp_path, network_weights="random")
    cfg.keypoints.estimator = "mediapipe"  # PCKh needs a real estimator; it ships in a wheel
    run_evaluate(cfg, generated=gen, out=out, metrics=["is", "fid", "ds", "pckh"])
    summary = pd.read_parquet(out / "summary.parquet").set_index(
        ["checkpoint", "direction", "metric"]
    )
    assert summary.loc[("7", "AB", "is"), "mean"] >= 1.0
    assert summary.loc[("real", "AB", "is"), "n"] == 2
    assert np.isfinite(summary.loc[("7", "AB", "fid"), "mean"])
    assert 0.0 <= summary.loc[("7", "BA", "ds"), "mean"] <= 1.0
    assert list(pd.read_csv(out / "inception_score.csv").columns) == LEGACY_COLUMNS
    # PCKh is computed, never skipped: BlazePose re-estimates both images of each pair.
    pckh = summary.xs("pckh", level="metric")
    assert (pckh["status"] == "ok").all(), pckh[["status", "reason"]]
    assert pckh["n"].sum() > 0 and pckh["mean"].notna().any()
    assert pckh["mean"].dropna().between(0, 1).all()


def test_cli(generated, tmp_path, ray_session):
    from cli.main import cli

    out = tmp_path / "eval"
    res = CliRunner().invoke(
        cli,
        [
            "--set",
            "ray.num_cpus=2",
            "evaluate",
            "--generated",
            str(generated),
            "--out",
            str(out),
            "--metrics",
            "ssim,fid",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "fid skipped: missing weights" in res.output and (out / "ssim_score.csv").exists()
    res = CliRunner().invoke(
        cli, ["evaluate", "--generated", str(generated), "--out", str(out), "--metrics", "nope"]
    )
    assert res.exit_code == 2 and "'nope' given; choose from" in res.output


def test_a_regenerated_image_is_scored_again_and_only_it(generated, tmp_path, ray_session):
    gen = tmp_path / "gen"
    shutil.copytree(generated, gen)
    out, cfg = tmp_path / "eval", _cfg(tmp_path)
    run_evaluate(cfg, generated=gen, out=out, metrics=["psnr"])
    path = out / "per_image" / "psnr.parquet"
    table = read_table(path, PER_IMAGE_SCHEMA)
    scored = table["error"].isna()
    table.loc[scored, "value"] = -1.0  # sentinels: a reused score keeps them
    write_table(table, path, PER_IMAGE_SCHEMA)
    target = table[scored].iloc[0]
    # The same file name, new content (an image generated again): now equal to the real one.
    (gen / target["fake_path"]).write_bytes((gen / target["real_path"]).read_bytes())
    run_evaluate(cfg, generated=gen, out=out, metrics=["psnr"])
    again = read_table(path, PER_IMAGE_SCHEMA)
    key = ["checkpoint", "direction", "name"]
    hit = (again[key] == target[key]).all(axis=1)
    assert again.loc[hit, "value"].iloc[0] == np.inf
    assert (again.loc[~hit & again["error"].isna(), "value"] == -1.0).all()
