"""`report`: the command-line face of the report stage (stages/report.py)."""

from __future__ import annotations

import click

from cli.options import ExistingOrURI
from stages.report import run_report


@click.command("report")
@click.option(
    "--evaluation",
    type=ExistingOrURI(file_okay=False),
    default=None,
    help="Evaluation directory written by `evaluate` (default: <output.root>/evaluation).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Report directory (default: <output.root>/reports/<report.name>).",
)
@click.option(
    "--generated",
    type=ExistingOrURI(file_okay=False),
    default=None,
    help="Generation directory for the image grids (default: the one evaluate recorded).",
)
@click.pass_obj
def report_command(obj, evaluation, out, generated) -> None:
    """Write report.html (self-contained, opens offline) and report.md from an evaluation.

    \b
    Contents: metrics per checkpoint and direction (mean ± std, n), skipped metrics with
    reasons, plots (each metric across checkpoints, per-image SSIM histogram), image grids
    (condition | target | generated) of the best, median and worst pairs by SSIM of the
    last checkpoint, provenance (config hash, package versions, checkpoint sha256, date).
    Example: run_pipeline.py report --evaluation out/demo/evaluation --out out/demo/reports/demo
    """
    result = run_report(obj.cfg, evaluation=evaluation, out=out, generated=generated)
    click.echo(result.summary())
    for name, path in result.outputs.items():
        click.echo(f"  {name}: {path}")
