"""Command line for the pose-transfer pipeline: one subcommand per stage.

Global options come before the subcommand:
  run_pipeline.py [--config FILE] [--set section.key=value]... [--address ADDR] [--verbose] COMMAND
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import click

from pipeline.config import Config, ConfigError, load_config


class PipelineContext:
    def __init__(self, config_path: str | None, overrides: tuple[str, ...], address: str | None):
        self.config_path = config_path
        self.overrides = list(overrides)
        if address:
            self.overrides.append(f"ray.address={address}")
        self._cfg: Config | None = None

    @property
    def cfg(self) -> Config:
        if self._cfg is None:
            try:
                self._cfg = load_config(self.config_path, self.overrides)
            except ConfigError as exc:
                raise click.UsageError(str(exc)) from None
        return self._cfg


# Stage commands live beside their stage (stages/<name>.py) and load only when invoked,
# so `--help` stays fast and a stage's heavy imports never slow down another.
LAZY_COMMANDS: dict[str, str] = {
    "train": "stages.train:train_command",
    "evaluate": "stages.evaluate:evaluate_command",
    "report": "stages.report:report_command",
    "weights": "stages.weights_cli:weights_group",
    "keypoints": "stages.keypoints:keypoints_command",
    "posemaps": "stages.posemaps:posemaps_command",
    "pairs": "stages.pairs:pairs_command",
    "generate": "stages.generate:generate_command",
    "transfer": "stages.generate:transfer_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            module, attr = LAZY_COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="YAML config (configs/demo.yaml, configs/deepfashion.yaml). Defaults apply without it.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field, e.g. --set train.iterations=200 (repeatable).")
@click.option("--address", envvar="RAY_ADDRESS", default=None,
              help="Ray cluster address to join (default: start a local Ray). Also $RAY_ADDRESS.")
@click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
@click.pass_context
def cli(ctx: click.Context, config_path, overrides, address, verbose) -> None:
    """Ray pipeline for multi-scale attention guided pose transfer.

    Stages read and write Parquet tables plus the published legacy files, so outputs
    are interchangeable with the published scripts. Quick start: `make demo`.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = PipelineContext(config_path, overrides, address)


@cli.command()
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Dataset root to create (img/ tree, image lists, ground truth CSV).")
@click.option("--identities", type=int, default=None, help="Identity folders (default: synth.identities).")
@click.option("--poses-per-identity", type=int, default=None, help="Images per identity (default: synth.poses_per_identity).")
@click.option("--seed", type=int, default=None, help="Random seed; the same seed gives byte-identical files.")
@click.pass_obj
def synth(obj: PipelineContext, out, identities, poses_per_identity, seed) -> None:
    """Build a synthetic DeepFashion-like dataset tree.

    \b
    Writes under OUT:
      img/{MEN,WOMEN}/<Category>/id_<8 digits>/01_<k>_<view>.jpg   256 x 176 figures
      train_img_list.csv, test_img_list.csv                       split by identity
      ground_truth_keypoints.csv                                  legacy keypoints CSV
    Example: run_pipeline.py synth --out data/synthetic --identities 40
    """
    from pipeline.synthetic import write_synthetic_tree

    sc = obj.cfg.synth
    n_id = identities if identities is not None else sc.identities
    n_pose = poses_per_identity if poses_per_identity is not None else sc.poses_per_identity
    if n_id < 2 or n_pose < 2:
        raise click.BadParameter("need at least 2 identities and 2 poses per identity")
    table = write_synthetic_tree(out, n_id, n_pose, sc.seed if seed is None else seed, sc.test_fraction)
    counts = table["split"].value_counts().to_dict()
    click.echo(f"synth: {len(table)} images ({counts.get('train', 0)} train, {counts.get('test', 0)} test) "
               f"in {n_id} identities under {Path(out).resolve()}")


@cli.command("check-networks")
@click.option("--reference", type=click.Path(exists=True, file_okay=False),
              default=str(Path(__file__).resolve().parent.parent / "shared" / "reference"),
              show_default=True, help="Folder with netG_ngf8.pth, netD_ndf8.pth, net_ngf8_io.pt.")
def check_networks(reference) -> None:
    """Check NetG/NetD against the published reference outputs (ngf 8, to 1e-5).

    Loads the reference state dicts with weights_only=True, runs the stored inputs in eval
    mode and prints the largest absolute difference. Exit code 1 on a mismatch.
    """
    from pipeline.parity import check_reference

    report = check_reference(Path(reference))
    for line in report.lines:
        click.echo(line)
    if not report.ok:
        sys.exit(1)


@cli.command("run")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output root (default: output.root of the config).")
@click.option("--from", "start", metavar="STAGE", default=None,
              help="Start at STAGE (rerun it) and check every stage after it.")
@click.option("--only", metavar="STAGE", default=None, help="Run only STAGE (always reruns it).")
@click.option("--force", metavar="STAGE", multiple=True, help="Rerun STAGE even when up to date (repeatable).")
@click.pass_obj
def run_command(obj: PipelineContext, out, start, only, force) -> None:
    """Run the whole pipeline DAG, doing only what changed.

    \b
    keypoints -> posemaps -> pairs -> (train) -> generate -> evaluate -> report
    A stage is skipped when its outputs exist and its fingerprint (inputs, its config
    section, code version) matches the one stored in OUT/_state/<stage>.json; `train` is
    not needed when generate.checkpoints names checkpoints. Each run appends to
    OUT/run_manifest.parquet and OUT/run_manifest.json (stage, start, end, rows, errors,
    fingerprint, config hash, package versions).
    Example: run_pipeline.py --config configs/deepfashion.yaml run --force evaluate
    """
    from pipeline.dag import plan_run, run_dag

    if out:
        obj.overrides.append(f"output.root={out}")
    cfg = obj.cfg
    try:
        plan = plan_run(only=only, start=start, force=tuple(force))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    run_dag(cfg, plan, echo=click.echo)


@cli.command()
@click.option("--out", type=click.Path(file_okay=False), default="out/demo", show_default=True,
              help="Where the synthetic data, outputs and report go.")
@click.option("--identities", type=int, default=None, help="Synthetic identities (default: synth.identities of the demo config).")
@click.pass_obj
def demo(obj: PipelineContext, out, identities) -> None:
    """The whole pipeline on embedded synthetic data, end to end.

    \b
    1. synth: a synthetic DeepFashion-like tree in OUT/data (kept on reruns)
    2. run --config configs/demo.yaml: keypoints (openpifpaf when its weights are present,
       otherwise the synthetic ground truth is imported, said plainly), pose maps, pairs,
       a short training of a small NetG, generation, evaluation and the report.
    A rerun does only what changed. Prints where the report is.
    """
    from pipeline.dag import plan_run, run_dag
    from pipeline.demo import prepare_demo

    if obj.config_path is None:
        obj.config_path = str(Path(__file__).resolve().parent / "configs" / "demo.yaml")
    cfg = prepare_demo(obj, Path(out), identities, echo=click.echo)
    run_dag(cfg, plan_run(), echo=click.echo)
    report = Path(cfg.output.root) / "reports" / cfg.report.name / "report.html"
    click.echo(f"demo finished: report at {report.resolve()}")


if __name__ == "__main__":
    cli()
