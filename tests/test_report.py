"""Report: files exist, the HTML is self-contained, skipped metrics appear with reasons."""

import re

import numpy as np
import pytest
from click.testing import CliRunner
from published_layout import write_published_layout

from pipeline.core.config import load_config
from stages.evaluate import run_evaluate
from stages.report import run_report


@pytest.fixture(scope="module")
def evaluation(synth_root, tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("report")
    write_published_layout(synth_root, root / "gen", {"100": 20.0, "300": 8.0}, max_pairs=5)
    cfg = load_config(None, ["ray.num_cpus=2", f"output.root={root}"])
    run_evaluate(
        cfg, generated=root / "gen", out=root / "evaluation", metrics=["ssim", "psnr", "fid"]
    )
    return root, cfg


def test_report_files_embed_images_and_list_skipped(evaluation):
    root, cfg = evaluation
    result = run_report(cfg)
    html_path = root / "reports" / "demo" / "report.html"
    assert result.outputs["html"] == str(html_path)
    text = html_path.read_text()
    images = re.findall(r"<img src='([^']+)'", text)
    # metrics plot, 2 galleries, SSIM histogram, 3 grids x 2 directions
    assert len(images) == 1 + 2 + 1 + 6
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"(src|href)=['\"](?!data:)", text)  # nothing fetched from outside
    assert "pt_inception-2015-12-05-6726825d.pth" in text  # FID skipped, with its reason
    for ckpt in ("100", "300"):
        assert f"<th>checkpoint {ckpt}</th><td>checkpoint file not found" in text
    md = (root / "reports" / "demo" / "report.md").read_text()
    assert "## Skipped metrics" in md and "| fid |" in md
    for link in re.findall(r"\]\((images/[^)]+)\)", md):
        assert (root / "reports" / "demo" / link).is_file()
    assert "| checkpoint | direction | images | ssim | psnr |" in md  # no column (and no 0) for fid
    # 5 pairs per checkpoint and direction, ssim and psnr, generated and condition copied.
    assert md.count("(n=5)") == 2 * 2 * 2 * 2
    rows = [line for line in md.splitlines() if line.startswith("| 300 | AB |")]
    assert [r.split(" | ")[2] for r in rows] == ["generated", "real targets", "condition copied"]
    assert "| 1 (by definition) | ∞ (by definition) |" in rows[1]
    assert "Checkpoint 300, A→B: SSIM" in md and "copying the condition" in md


def test_report_cli_and_missing_evaluation(evaluation, tmp_path):
    from cli.main import cli

    root, _ = evaluation
    res = CliRunner().invoke(
        cli, ["report", "--evaluation", str(root / "evaluation"), "--out", str(tmp_path / "r")]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "report.html").exists() and "fid skipped" in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(
        cli, ["report", "--evaluation", str(empty), "--out", str(tmp_path / "r2")]
    )
    assert res.exit_code != 0 and "run `evaluate" in res.output


def test_the_target_pose_is_drawn_where_the_network_frame_puts_it():
    from stages.report_figures import pose_tile

    x, y = np.full(18, -1), np.full(18, -1)
    x[1], y[1], x[8], y[8] = 176, 100, 176, 400  # neck and right hip of a 352 x 512 image
    tile = np.asarray(pose_tile((x, y, 512, 352), 256))
    assert tile.shape == (256, 176, 3)
    red = (tile[..., 0] > 150) & (tile[..., 1] < 100)
    rows, cols = np.nonzero(red)
    # Halved onto the 256 x 176 frame: a limb from (88, 50) to (88, 200).
    assert abs(cols.mean() - 88) < 2 and rows.min() >= 47 and rows.max() <= 203
    blank = np.asarray(pose_tile(None, 256))
    assert not ((blank[..., 0] > 150) & (blank[..., 1] < 100)).any()


def test_plots_of_unchanged_numbers_are_not_redrawn(tmp_path):
    import pandas as pd

    from stages.report_figures import cached_plot, ssim_histogram

    calls = []

    def histogram(ssim, ckpts):
        calls.append(len(ssim))
        return ssim_histogram(ssim, ckpts)

    ssim = pd.DataFrame({"checkpoint": ["1"] * 3, "value": [0.2, 0.5, 0.9], "error": None})
    first = cached_plot(tmp_path, histogram, ssim, ["1"])
    assert first.startswith(b"\x89PNG")
    assert cached_plot(tmp_path, histogram, ssim.copy(), ["1"]) == first and calls == [3]
    changed = ssim.assign(value=[0.2, 0.5, 0.8])
    assert cached_plot(tmp_path, histogram, changed, ["1"]) != first and calls == [3, 3]
    # One kept version per plot; without a folder nothing is kept.
    assert len(list(tmp_path.glob("histogram.*.png"))) == 1
    cached_plot(None, histogram, ssim, ["1"])
    assert calls == [3, 3, 3]
