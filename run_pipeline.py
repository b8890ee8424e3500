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


if __name__ == "__main__":
    cli()
