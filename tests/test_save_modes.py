"""Save modes through evaluate and report: the mode generate recorded is carried into
evaluation.json and the report header; mixed modes are refused unless allowed, and then
flagged; a resumed evaluation never mixes modes."""

from __future__ import annotations

import json

import pytest
from published_layout import write_published_layout

from pipeline.core.config import load_config
from pipeline.core.errors import DataError
from pipeline.generator.save_modes import (
    DEFAULT,
    GENERATION_META,
    PUBLISHED,
    record_generation,
    save_mode_text,
)
from stages.evaluate import run_evaluate
from stages.report import run_report


@pytest.fixture
def generated(synth_root, tmp_path):
    gen = tmp_path / "gen"
    write_published_layout(synth_root, gen, {"100": 20.0, "300": 8.0}, max_pairs=3)
    cfg = load_config(None, ["ray.num_cpus=2", f"output.root={tmp_path}"])
    return gen, cfg


def test_texts_say_whether_numbers_compare_with_the_published_ones():
    assert "comparable with published numbers" in save_mode_text({"1": PUBLISHED})
    assert "NOT comparable with published numbers" in save_mode_text({"1": DEFAULT})
    mixed = save_mode_text({"1": PUBLISHED, "2": DEFAULT})
    assert mixed.startswith("MIXED") and "default: 2" in mixed and "published: 1" in mixed


def test_published_mode_reaches_evaluation_and_report_header(generated, tmp_path, ray_session):
    gen, cfg = generated
    record_generation(gen, PUBLISHED, ["100", "300"], "one-hot")
    result = run_evaluate(cfg, generated=gen, out=tmp_path / "ev", metrics=["ssim"])
    meta = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert meta["save_mode"] == PUBLISHED
    assert meta["save_modes"] == {"100": PUBLISHED, "300": PUBLISHED}
    assert any("published save mode" in n for n in result.notes)
    run_report(cfg, evaluation=tmp_path / "ev", out=tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    header = "**Images scored:** published save mode: the published test script's images"
    assert md.splitlines()[2].startswith(header)
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "<b>Images scored:</b> published save mode" in html

    # The images of the same checkpoints regenerated in the default mode: resuming into the
    # same evaluation would keep scores of the published images beside them.
    (gen / GENERATION_META).unlink()
    record_generation(gen, DEFAULT, ["100", "300"], "one-hot")
    kept = r"keeps scores of images saved in another mode \(100: published -> default"
    with pytest.raises(DataError, match=kept):
        run_evaluate(cfg, generated=gen, out=tmp_path / "ev", metrics=["ssim"])


def test_mixed_modes_are_refused_unless_allowed_and_then_flagged(generated, tmp_path, ray_session):
    gen, cfg = generated
    record_generation(gen, DEFAULT, ["100"], "one-hot")  # 300 copied in from elsewhere
    with pytest.raises(DataError, match="different modes.*default: 100; unknown: 300"):
        run_evaluate(cfg, generated=gen, out=tmp_path / "ev", metrics=["ssim"])
    assert not (tmp_path / "ev").exists()
    run_evaluate(
        cfg, generated=gen, out=tmp_path / "ev", metrics=["ssim"], allow_mixed_save_modes=True
    )
    assert json.loads((tmp_path / "ev" / "evaluation.json").read_text())["save_mode"] == "mixed"
    result = run_report(cfg, evaluation=tmp_path / "ev", out=tmp_path / "rep")
    assert any(w.startswith("Images scored: MIXED save modes") for w in result.notes)
    assert "> **Warning:** Images scored: MIXED" in (tmp_path / "rep" / "report.md").read_text()
