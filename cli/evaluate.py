"""`evaluate`: the command-line face of the evaluate stage (stages/evaluate.py)."""

from __future__ import annotations

import click

from cli.options import ExistingOrURI
from pipeline.metrics.registry import METRICS
from stages.evaluate import run_evaluate


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
    type=ExistingOrURI(file_okay=False),
    default=None,
    help="Generation directory in the published layout, a local path or s3://bucket/prefix "
    "(default: <output.root>/generated).",
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
    (the published test layout; real and generated matched by file name), in a local
    directory or under s3://bucket/prefix (listed once; a rerun reads no unchanged image).
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
    cfg = obj.override_flags(
        {
            "--metrics": ("evaluate.metrics", metrics),
            "--weights": ("evaluate.network_weights", network_weights),
        }
    )
    obj.check_location("--generated", generated)
    result = run_evaluate(
        cfg,
        generated=generated,
        out=out,
        allow_mixed_save_modes=allow_mixed_save_modes,
    )
    click.echo(result.summary())
    for name, path in result.outputs.items():
        click.echo(f"  {name}: {path}")
