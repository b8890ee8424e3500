"""evaluate on a generation root in S3 (a real server, SeaweedFS: tests/s3_server.py): the
same scores, tables and report gallery as on the local copy; a rerun that reads no image;
an unusable URI refused before anything is written."""

from __future__ import annotations

import json
import uuid
from urllib.parse import unquote

import pandas as pd
import pytest
from click.testing import CliRunner
from published_layout import corrupt, write_published_layout
from s3_server import RequestLog

from cli.main import cli
from pipeline.core import storage
from pipeline.core.atomic_io import read_table
from pipeline.core.config import StorageConfig, load_config
from pipeline.core.layout import EvaluationLayout, scan_generation
from pipeline.generator.save_modes import record_generation
from pipeline.metrics.summary import PER_IMAGE_SCHEMA
from stages.evaluate import run_evaluate
from stages.report import build_report

METRICS = ["ssim", "psnr", "lpips_alex"]
# Where the two runs may differ: what a rerun compares (content vs listing) and the node.
RUN_COLUMNS = ["inputs", "node"]


@pytest.fixture(scope="module")
def generation(s3, synth_root, tmp_path_factory) -> tuple[str, str]:
    """A small generation tree with a save-mode record and one truncated image, locally and
    uploaded file by file under a fresh prefix of the bucket: (local root, URI)."""
    local = tmp_path_factory.mktemp("s3eval") / "generated"
    write_published_layout(synth_root, local, {"500": 20.0, "1000": 6.0}, max_pairs=3)
    corrupt(sorted((local / "fake_images" / "iter_500" / "fake_B").iterdir())[0])
    record_generation(local, "default", ["500", "1000"], "test pose maps")
    uri = f"s3://{s3.bucket}/evaluate-{uuid.uuid4().hex[:6]}/generated"
    for f in storage.list_files(local):
        storage.write_bytes(storage.join(uri, f.rel), storage.read_bytes(f.path))
    return str(local), uri


def _sets(out_root, endpoint: str) -> list[str]:
    return [
        "ray.num_cpus=2",
        f"output.root={out_root}",
        "evaluate.pixel_batch_size=4",
        "evaluate.network_weights=random",
        f"evaluate.metrics={','.join(METRICS)}",
        f"storage.endpoint_override={endpoint}",
    ]


def _evaluate_cli(sets: list[str], generated: str, out) -> str:
    args = [a for s in sets for a in ("--set", s)]
    res = CliRunner().invoke(cli, [*args, "evaluate", "--generated", generated, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return res.output


def _image_requests(proxy: RequestLog) -> list[tuple[str, str]]:
    """The requests that name an image, with their keys decoded."""
    return [(method, unquote(target)) for method, target in proxy.requests if ".jpg" in target]


def test_a_scan_of_s3_is_list_calls_only_and_matches_the_local_one(s3, generation):
    local, uri = generation
    with RequestLog(s3.endpoint) as proxy:
        cfg = StorageConfig(endpoint_override=proxy.endpoint, region=s3.region)
        pd.testing.assert_frame_equal(scan_generation(uri, cfg), scan_generation(local))
        assert proxy.requests and all(
            method == "GET" and "list-type=2" in target for method, target in proxy.requests
        ), proxy.requests


def test_s3_scores_equal_the_local_ones_and_a_rerun_reads_no_image(s3, generation, tmp_path):
    local, uri = generation
    local_out, s3_out = tmp_path / "local" / "evaluation", tmp_path / "s3" / "evaluation"
    run_evaluate(load_config(None, _sets(tmp_path / "local", s3.endpoint)), local, local_out)
    with RequestLog(s3.endpoint) as proxy:
        sets = _sets(tmp_path / "s3", proxy.endpoint)
        _evaluate_cli(sets, uri, s3_out)
        # The workers read every image of the tree through the configured endpoint.
        prefix = uri.removeprefix("s3://")
        images = {f"/{prefix}/{f.rel}" for f in storage.list_files(local) if ".jpg" in f.rel}
        assert {path for method, path in _image_requests(proxy) if method == "GET"} == images
        a, b = EvaluationLayout(local_out), EvaluationLayout(s3_out)
        for metric in METRICS:
            mine, theirs = (
                read_table(e.per_image(metric), PER_IMAGE_SCHEMA).drop(columns=RUN_COLUMNS)
                for e in (a, b)
            )
            pd.testing.assert_frame_equal(theirs, mine)
            assert theirs["error"].notna().sum() == 1  # the truncated image, in both
        pd.testing.assert_frame_equal(pd.read_parquet(b.summary), pd.read_parquet(a.summary))
        assert (s3_out / "ssim_score.csv").read_bytes() == (
            local_out / "ssim_score.csv"
        ).read_bytes()
        meta = json.loads(b.meta.read_text())
        assert meta["generated"] == uri and meta["save_mode"] == "default"

        # Up to date from the listing alone: nothing is scored again, no image is read.
        written = {m: b.per_image(m).stat().st_mtime_ns for m in METRICS}
        proxy.clear()
        _evaluate_cli(sets, uri, s3_out)
        assert proxy.requests and not _image_requests(proxy), proxy.requests
        assert {m: b.per_image(m).stat().st_mtime_ns for m in METRICS} == written

    # The report draws the same gallery and grids from the bucket as from the local folder.
    at_server = StorageConfig(endpoint_override=s3.endpoint)
    figures = [
        {name: png for name, _, png in build_report(e, "s3", storage_cfg=at_server).figures}
        for e in (local_out, s3_out)
    ]
    for name in ("gallery_AB.png", "gallery_BA.png", "grid_1000_BA_best.png"):
        assert figures[0][name] == figures[1][name], name


def test_a_missing_bucket_stops_the_cli_before_anything_is_written(s3, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli,
        ["--set", f"output.root={out}", "evaluate", "--generated", "s3://no-such-bucket/gen"],
    )
    assert res.exit_code == 2, res.output
    assert "nothing was started or written" in res.output, res.output
    assert "--generated 's3://no-such-bucket/gen': bucket 'no-such-bucket' does not exist" in (
        res.output
    )
    assert not out.exists()
