"""`run`, `status`, `clean` and `demo`: the command-line face of the DAG (stages/dag.py)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click

from stages import STAGE_NAMES

REPO = Path(__file__).resolve().parent.parent
STAGE = click.Choice(STAGE_NAMES)
WAIT_OPTION = click.option(
    "--wait",
    is_flag=True,
    help="When another run holds the output root, wait for it instead of stopping.",
)


@click.command("run")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Output root (default: output.root of the config).",
)
@click.option(
    "--from",
    "start",
    type=STAGE,
    default=None,
    help="Start at STAGE (redo it) and check every stage after it.",
)
@click.option("--only", type=STAGE, default=None, help="Run only STAGE (always redoes it).")
@click.option(
    "--force",
    type=STAGE,
    multiple=True,
    help="Redo STAGE even when up to date, its earlier outputs moved aside (repeatable).",
)
@click.option(
    "--resume",
    "resume",
    type=STAGE,
    multiple=True,
    help="Continue STAGE's existing outputs although its fingerprint changed (repeatable; "
    "for train: keep training the current run).",
)
@click.option(
    "--dry-run", "-n", is_flag=True, help="Say what would run and why; change nothing on disk."
)
@WAIT_OPTION
@click.pass_obj
def run_command(obj, out, start, only, force, resume, dry_run, wait) -> None:
    """Run the whole pipeline DAG, doing only what changed.

    \b
    keypoints -> posemaps -> pairs -> (train) -> generate -> evaluate -> report
    A stage reruns only for a reason it prints: its version or an output-defining config
    key changed (batch sizes, concurrency and workers do not count), the content of its
    inputs changed (mtimes alone do not count: OUT/_state caches content digests), an
    output is missing, or it has more to do (train.iterations raised: training continues).
    Earlier outputs are never deleted: a redo moves them to OUT/<stage>.prev/<run id>/
    (`clean` removes them). A stale `train` stops the run and says how to go on.
    Each run appends to OUT/run_manifest.parquet and .json. One run at a time holds an
    output root (OUT/_state/run.lock): a second one stops naming the holder, or waits with
    --wait. Before anything is written the inputs and the config are checked.
    Ctrl-C stops it with exit code 130, keeping every finished batch; rerun to resume.
    Example: run_pipeline.py run --config configs/deepfashion.yaml --dry-run
    """
    from stages.dag import plan_run, run_dag

    if out:
        obj.override(f"output.root={out}")
    plan = plan_run(only=only, start=start, force=tuple(force), resume=tuple(resume))
    run_dag(obj.cfg, plan, echo=click.echo, dry_run=dry_run, wait=wait)


@click.command("status")
@click.pass_obj
def status_command(obj) -> None:
    """Say, per stage, whether it is up to date and why it would run.

    \b
    The same assessment as `run --dry-run`: up to date / would run / would resume /
    would update, with the config keys that changed (from what to what), the inputs that
    changed and how many of their files, and the stage version. Changes nothing on disk.
    Example: run_pipeline.py status --config configs/demo.yaml
    """
    from stages.dag import plan_run, run_dag

    run_dag(obj.cfg, plan_run(), echo=click.echo, dry_run=True)


@click.command("clean")
@click.option("--yes", is_flag=True, help="Delete them (without it, only list them).")
@click.pass_obj
def clean_command(obj, yes) -> None:
    """Delete outputs that reruns moved aside (OUT/<stage>.prev/<run id>/).

    \b
    Lists each folder with its size; deletes only with --yes.
    Example: run_pipeline.py clean --config configs/demo.yaml --yes
    """
    from stages.dag import previous_runs

    folders = previous_runs(obj.cfg)
    if not folders:
        click.echo("nothing moved aside")
        return
    for folder in folders:
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        click.echo(f"{'deleting' if yes else 'kept'}  {folder}  ({size / 1e6:.1f} MB)")
        if yes:
            shutil.rmtree(folder)
            if not any(folder.parent.iterdir()):
                folder.parent.rmdir()
    if not yes:
        click.echo("run again with --yes to delete them")


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="out/demo",
    show_default=True,
    help="Where the synthetic data, outputs and report go.",
)
@click.option(
    "--identities",
    type=click.IntRange(2),
    default=None,
    help="Synthetic identities (default: synth.identities of the demo config).",
)
@WAIT_OPTION
@click.pass_obj
def demo_command(obj, out, identities, wait) -> None:
    """The whole pipeline on embedded synthetic data, end to end.

    \b
    1. synth: a synthetic DeepFashion-like tree in OUT/data (kept on reruns)
    2. run --config configs/demo.yaml on it: keypoints, pose maps, pairs, a short training
       of a small NetG, generation, evaluation and the report. The shipped checkpoint
       (weights/demo/, trained longer by scripts/train_demo_checkpoint.py) is generated
       and scored beside the one the run trains.
    A rerun does only what changed. Prints where the report is.
    """
    from pipeline.core.layout import OutputLayout
    from pipeline.generator.demo_checkpoint import demo_generator
    from pipeline.synthetic.tree import GROUND_TRUTH_CSV, ensure_synthetic_tree
    from stages.dag import plan_run, run_dag

    if obj.config_path is None:
        obj.config_path = str(REPO / "configs" / "demo.yaml")
    data = Path(out) / "data"
    # The estimated keypoints are scored against the tree's ground truth (annotation QA).
    obj.override(
        f"dataset.root={data}", f"output.root={out}", f"keypoints.compare={GROUND_TRUTH_CSV}"
    )
    if identities is not None:
        obj.override(f"synth.identities={identities}")
    shipped = demo_generator()
    if shipped is not None and not obj.cfg.generate.checkpoints:
        # The shipped checkpoint shows what the generator learns; the one this run trains
        # (minutes on CPU) shows that training works. Both are generated and scored.
        obj.override(
            f"generate.checkpoints={shipped},{OutputLayout(out).checkpoints}",
            f"weights.checkpoint_dir={shipped.parent}",
        )
        click.echo(
            f"[demo] scoring the shipped checkpoint {shipped} (recipe: "
            f"{shipped.parent / 'recipe.json'}) beside the one this run trains"
        )
    sc = obj.cfg.synth
    if ensure_synthetic_tree(data, sc.identities, sc.poses_per_identity, sc.seed):
        click.echo(
            f"[synth] wrote {sc.identities * sc.poses_per_identity} synthetic images "
            f"({sc.identities} identities) to {data}"
        )
    else:
        click.echo(f"[synth] {data} already holds this synthetic tree, kept")
    cfg = obj.cfg
    t0 = time.perf_counter()
    rows = run_dag(cfg, plan_run(), echo=click.echo, wait=wait)
    report = OutputLayout(cfg.output.root).report(cfg.report.name) / "report.html"
    click.echo(f"demo finished in {time_summary(time.perf_counter() - t0, rows)}")
    click.echo(f"report at {report.resolve()}")


def time_summary(total: float, rows) -> str:
    """'3 min 12 s: train 150 s (78%), keypoints 20 s (10%), ...' over the stages that ran."""
    ran = rows[rows["status"] == "ran"].sort_values("seconds", ascending=False)
    parts = [
        f"{r.stage} {r.seconds:.0f} s ({100 * r.seconds / max(total, 1e-9):.0f}%)"
        for r in ran.itertuples()
    ]
    head = f"{int(total // 60)} min {total % 60:.0f} s"
    return head + (": " + ", ".join(parts) if parts else " (every stage was up to date)")
