"""The command-line group of the pose-transfer pipeline: one subcommand per stage and `run`
for the DAG, each loaded from its module in cli/ only when invoked; the config options,
`synth`, `check-networks`, and `main` (the `posetransfer` command and run_pipeline.py).

The config options (--config, --set, --address, --verbose) are accepted before or after
the subcommand:
  run_pipeline.py [OPTIONS] COMMAND [ARGS]...   or   run_pipeline.py COMMAND [ARGS]... [OPTIONS]
Errors of the input (config, data, weights) print one paragraph and exit with code 2; the
traceback only with --verbose.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from pipeline.core.config import Config, load_config
from pipeline.core.errors import ConfigError, PipelineError
from stages import STAGE_NAMES

REPO = Path(__file__).resolve().parent.parent
INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C (128 + SIGINT)


class PipelineContext:
    """What the config options collected; the config is loaded once, on first use."""

    def __init__(self) -> None:
        self.config_path: str | None = None
        self.overrides: list[str] = []
        self.verbose = False
        self._cfg: Config | None = None

    @property
    def cfg(self) -> Config:
        if self._cfg is None:
            from pipeline.core import storage
            from stages.preflight import location_problems  # --help imports no stage

            cfg = load_config(self.config_path, self.overrides)
            storage.configure(cfg.storage)
            if problems := location_problems(cfg):
                raise refusal(problems)
            self._cfg = cfg
        return self._cfg

    def check_location(self, option: str, target: str | None) -> None:
        """Stop before anything is written when a command's location option names a URI
        that cannot be used, with the paragraph the config keys get (local paths pass)."""
        from pipeline.core import storage

        if target and (problem := storage.location_problem(option, target, self.cfg.storage)):
            raise refusal([problem])

    def override(self, *items: str) -> None:
        """Add `section.key=value` overrides; they apply to the config loaded next."""
        self.overrides.extend(items)
        self._cfg = None

    def override_flags(self, flags: dict[str, tuple[str, Any]]) -> Config:
        """Apply a command's flags that stand for config fields, `{"--flag": ("section.key",
        value)}` (value None: not given), as overrides, so they are validated like --set
        and an error names the field and the flag. Returns the config."""
        cfg = self.cfg  # an error of --config or --set is theirs, not the flags'
        given = {flag: (key, value) for flag, (key, value) in flags.items() if value is not None}
        if not given:
            return cfg
        # JSON is YAML: each value parses back as what the flag gave (a path stays a string).
        self.override(*(f"{key}={json.dumps(value)}" for key, value in given.values()))
        try:
            return self.cfg
        except ConfigError as exc:
            named = [f"{f} {json.dumps(v)}" for f, (k, v) in given.items() if f"'{k}'" in str(exc)]
            if not named:
                raise
            raise ConfigError(f"{exc} (given as {', '.join(named)})") from None


def refusal(problems: list[str]) -> ConfigError:
    return ConfigError("nothing was started or written:\n  " + "\n  ".join(problems))


def _set_config(ctx: click.Context, _param, value):
    if value is not None:
        ctx.ensure_object(PipelineContext).config_path = value


def _set_overrides(ctx: click.Context, _param, value):
    ctx.ensure_object(PipelineContext).override(*value)


def _set_address(ctx: click.Context, _param, value):
    if value:
        ctx.ensure_object(PipelineContext).override(f"ray.address={value}")


def _set_verbose(ctx: click.Context, _param, value):
    if value:
        ctx.ensure_object(PipelineContext).verbose = True
        logging.getLogger().setLevel(logging.DEBUG)


def config_options() -> list[click.Option]:
    """The options every command accepts (fresh objects: click options hold parse state)."""
    return [
        click.Option(
            ["--config", "config_path"],
            type=click.Path(dir_okay=False),
            expose_value=False,
            callback=_set_config,
            is_eager=True,
            help="YAML config (configs/demo.yaml, configs/deepfashion.yaml); "
            "defaults apply without it.",
        ),
        click.Option(
            ["--set", "overrides"],
            multiple=True,
            metavar="KEY=VALUE",
            expose_value=False,
            callback=_set_overrides,
            help="Override a config field, e.g. --set train.iterations=200 (repeatable).",
        ),
        click.Option(
            ["--address"],
            default=None,
            expose_value=False,
            callback=_set_address,
            help="Ray cluster to join (host:port, ray://head:10001); default: start a "
            "local Ray. Also ray.address or $RAY_ADDRESS.",
        ),
        click.Option(
            ["--verbose", "-v"],
            is_flag=True,
            expose_value=False,
            callback=_set_verbose,
            help="Debug logging, and tracebacks for input errors.",
        ),
    ]


# Stage commands live in their own modules of this package and load only when invoked;
# their one-line help is here so that the top-level --help imports no stage (a test keeps
# both in step).
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "keypoints": (
        "cli.keypoints:keypoints_command",
        "OpenPose-18 keypoints for every image of dataset.root.",
    ),
    "posemaps": (
        "cli.posemaps:posemaps_command",
        "Pose maps from the keypoints table (tables/keypoints.parquet of dataset.root).",
    ),
    "pairs": (
        "cli.pairs:pairs_command",
        "Train/test pairs from the keypoints table and the image lists of dataset.root.",
    ),
    "train": (
        "cli.train:train_command",
        "Train NetG/NetD on the train pairs of dataset.root with Ray Train (DDP).",
    ),
    "generate": (
        "cli.generate:generate_command",
        "Generate every test pair with one or more checkpoints, both directions.",
    ),
    "evaluate": (
        "cli.evaluate:evaluate_command",
        "Score generated images: SSIM, PSNR, IS, DS, PCKh, LPIPS, FID for every checkpoint.",
    ),
    "report": (
        "cli.report:report_command",
        "Write report.html (self-contained, opens offline) and report.md from an evaluation.",
    ),
    "weights": (
        "cli.weights:weights_group",
        "Network weights: list what is present (`status`) and fetch what is missing (`fetch`).",
    ),
    "run": ("cli.dag:run_command", "Run the whole pipeline DAG, doing only what changed."),
    "status": (
        "cli.dag:status_command",
        "Say, per stage, whether it is up to date and why it would run.",
    ),
    "clean": (
        "cli.dag:clean_command",
        "Delete outputs that reruns moved aside (OUT/<stage>.prev/<run id>/).",
    ),
    "demo": (
        "cli.dag:demo_command",
        "The whole pipeline on embedded synthetic data, end to end.",
    ),
    "transfer": (
        "cli.transfer:transfer_command",
        "Re-pose the person of one image (condition) in the pose of a reference image.",
    ),
}


def _with_config_options(cmd: click.Command) -> click.Command:
    names = {p.name for p in cmd.params}
    cmd.params.extend(o for o in config_options() if o.name not in names)
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            _with_config_options(sub)
    return cmd


class PipelineGroup(click.Group):
    """Loads stage commands lazily, gives every command the config options, and turns the
    pipeline's input errors into a message and exit code 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            module, attr = LAZY_COMMANDS[name][0].split(":")
            return _with_config_options(getattr(importlib.import_module(module), attr))
        cmd = super().get_command(ctx, name)
        return _with_config_options(cmd) if cmd is not None else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [
            (
                name,
                LAZY_COMMANDS[name][1]
                if name in LAZY_COMMANDS
                else self.commands[name].get_short_help_str(limit=90),
            )
            for name in self.list_commands(ctx)
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo(
                "\nInterrupted. Finished work is kept: stages save finished batches as they go "
                "(part files beside their tables, generated images with their manifest rows, "
                "training checkpoints and Ray Train states), and outputs are only ever "
                "replaced whole. Run the same command again to resume from there.",
                err=True,
            )
            ctx.exit(INTERRUPTED)
        except PipelineError as exc:
            if ctx.ensure_object(PipelineContext).verbose:
                raise
            click.echo(f"Error: {_message(exc)}", err=True)
            ctx.exit(2)


def _message(exc: PipelineError) -> str:
    # An error raised in a Ray worker arrives wrapped; its cause holds the plain message.
    cause = getattr(exc, "cause", None)
    return str(cause if isinstance(cause, PipelineError) else exc)


@click.group(
    cls=PipelineGroup,
    params=config_options(),
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Ray pipeline for multi-scale attention guided pose transfer.

    Stages read and write Parquet tables plus the published legacy files, so outputs
    are interchangeable with the published scripts. Quick start: `make demo`.
    Stages, in DAG order: {stages}.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    obj = ctx.ensure_object(PipelineContext)
    if obj.verbose:
        logging.getLogger().setLevel(logging.DEBUG)


cli.help = cli.help.replace("{stages}", " -> ".join(STAGE_NAMES))


@cli.command()
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Dataset root to create (img/ tree, image lists, ground truth CSV).",
)
@click.option(
    "--identities",
    type=click.IntRange(2),
    default=None,
    help="Identity folders (default: synth.identities).",
)
@click.option(
    "--poses-per-identity",
    type=click.IntRange(2),
    default=None,
    help="Images per identity (default: synth.poses_per_identity).",
)
@click.option(
    "--seed", type=int, default=None, help="Random seed; the same seed gives byte-identical files."
)
@click.option(
    "--deepfashion-size",
    is_flag=True,
    help="DeepFashion's size and proportions: 52,712 images in 7,982 identities (6 or 7 "
    "each), drawn in parallel Ray tasks (overrides --identities, --poses-per-identity).",
)
@click.pass_obj
def synth(
    obj: PipelineContext, out, identities, poses_per_identity, seed, deepfashion_size
) -> None:
    """Build a synthetic DeepFashion-like dataset tree.

    \b
    Writes under OUT:
      img/{MEN,WOMEN}/<Category>/id_<8 digits>/01_<k>_<view>.jpg   256 x 176 figures
      train_img_list.csv, test_img_list.csv                       split by identity
      ground_truth_keypoints.csv                                  legacy keypoints CSV
    Example: run_pipeline.py synth --out data/synthetic --identities 40
    """
    from pipeline.synthetic.tree import (
        DEEPFASHION_IDENTITIES,
        deepfashion_poses,
        write_synthetic_tree,
    )

    sc = obj.cfg.synth
    n_id = identities if identities is not None else sc.identities
    n_pose = poses_per_identity if poses_per_identity is not None else sc.poses_per_identity
    seed = sc.seed if seed is None else seed
    if deepfashion_size:
        from pipeline.cluster.runtime import init_ray

        init_ray(obj.cfg.ray)  # --address: the cluster draws them
        n_id, n_pose = DEEPFASHION_IDENTITIES, deepfashion_poses()
    table = write_synthetic_tree(
        out, n_id, n_pose, seed, sc.test_fraction, parallel=deepfashion_size
    )
    counts = table["split"].value_counts().to_dict()
    click.echo(
        f"synth: {len(table)} images ({counts.get('train', 0)} train, "
        f"{counts.get('test', 0)} test) in {n_id} identities under {Path(out).resolve()}"
    )


@cli.command("check-networks")
@click.option(
    "--reference",
    type=click.Path(exists=True, file_okay=False),
    default=str(REPO.parent / "shared" / "reference"),
    show_default=True,
    help="Folder with netG_ngf8.pth, netD_ndf8.pth, net_ngf8_io.pt.",
)
def check_networks(reference) -> None:
    """Check NetG/NetD against the published reference outputs (ngf 8, to 1e-5).

    Loads the reference state dicts with weights_only=True, runs the stored inputs in eval
    mode and prints the largest absolute difference. Exit code 1 on a mismatch.
    """
    from pipeline.generator.parity import check_reference

    report = check_reference(Path(reference))
    for line in report.lines:
        click.echo(line)
    if not report.ok:
        sys.exit(1)


def main() -> None:
    """The `posetransfer` console command."""
    cli()
