"""`weights` commands: which network weights the pipeline can use, where they are looked
for, which are present (size, sha256), and fetching them where the internet is reachable."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.core.layout import OutputLayout


def weight_rows(weights_dir: str | None, checkpoint_dirs: list[Path]) -> list[dict]:
    """One row per known weight file and per NetG checkpoint found: name, use, file,
    where looked for, present, size, sha256."""
    from pipeline.core.weights import KNOWN_WEIGHTS, file_sha256, find_weight, weight_search_dirs

    rows = []
    where = ", ".join(str(d) for d in weight_search_dirs(weights_dir))
    for spec in KNOWN_WEIGHTS.values():
        found = find_weight(spec.filename, weights_dir)
        rows.append(
            {
                "name": spec.name,
                "used_for": spec.used_for,
                "file": spec.filename,
                "where": where,
                "path": str(found) if found else None,
                "size": found.stat().st_size if found else None,
                "sha256": file_sha256(found) if found else None,
            }
        )
    rows += blazepose_rows() + demo_rows()
    for d in checkpoint_dirs:
        for path in sorted(d.glob("netG_*.pth")) if d.is_dir() else []:
            rows.append(
                {
                    "name": f"netG {path.stem[5:]}",
                    "used_for": "generate: NetG checkpoint",
                    "file": path.name,
                    "where": str(d),
                    "path": str(path),
                    "size": path.stat().st_size,
                    "sha256": file_sha256(path),
                }
            )
    return rows


def demo_rows() -> list[dict]:
    """The demo's shipped checkpoint pair, with the recipe that made it."""
    from pipeline.generator.demo_checkpoint import DEMO_DIR, RECIPE, recipe, shipped_files

    made_by = recipe().get("command", "no recipe.json")
    rows = []
    for f in shipped_files():
        check = "" if f.intact else f"; sha256 differs from {RECIPE}'s {f.recorded}"
        rows.append(
            {
                "name": f"demo {f.path.stem}",
                "used_for": f"demo: generate and evaluate (shipped; made by {made_by}, "
                f"{DEMO_DIR / RECIPE}{check})",
                "file": f.path.name,
                "where": str(DEMO_DIR),
                "path": str(f.path),
                "size": f.path.stat().st_size,
                "sha256": f.sha256,
            }
        )
    return rows


def blazepose_rows() -> list[dict]:
    """BlazePose's model files, which ship inside the mediapipe wheel (never fetched)."""
    from pipeline.core.weights import file_sha256
    from pipeline.pose.blazepose import MediapipeUnavailable, model_files

    try:
        files = model_files()
    except MediapipeUnavailable as exc:
        return [
            {
                "name": "blazepose",
                "used_for": "keypoints (mediapipe)",
                "file": "mediapipe wheel",
                "where": str(exc),
                "path": None,
                "size": None,
                "sha256": None,
            }
        ]
    return [
        {
            "name": name,
            "used_for": "keypoints and evaluate: PCKh (mediapipe)",
            "file": path.name,
            "where": str(path.parent),
            "path": str(path) if path.is_file() else None,
            "size": path.stat().st_size if path.is_file() else None,
            "sha256": file_sha256(path) if path.is_file() else None,
        }
        for name, path in files.items()
    ]


@click.group("weights")
def weights_group() -> None:
    """Network weights: list what is present (`status`) and fetch what is missing (`fetch`)."""


@weights_group.command("status")
@click.pass_obj
def status(obj) -> None:
    """List every network weight the pipeline can use and whether it is present.

    \b
    For each: name, what uses it, expected file name, where it is looked for
    (weights.dir, then the torch hub cache), and for present files size and sha256.
    Also lists NetG checkpoints in weights.checkpoint_dir and <output.root>/train/checkpoints.
    Exit code 0 when every weight is present, 1 when some are missing (the metrics that
    need them are skipped with the reason).
    Example: run_pipeline.py --set weights.dir=/models weights status
    """
    cfg = obj.cfg
    dirs = [
        Path(d)
        for d in (cfg.weights.checkpoint_dir, OutputLayout(cfg.output.root).checkpoints)
        if d
    ]
    rows = weight_rows(cfg.weights.dir, dirs)
    missing = 0
    for r in rows:
        if r["path"]:
            click.echo(
                f"present  {r['name']:<15} {r['used_for']}\n         {r['path']}  "
                f"{r['size'] / 1e6:.1f} MB  sha256 {r['sha256']}"
            )
        else:
            missing += 1
            click.echo(
                f"MISSING  {r['name']:<15} {r['used_for']}\n"
                f"         {r['file']} looked for in {r['where']}"
            )
    click.echo(f"{len(rows) - missing} present, {missing} missing")
    if missing:
        raise SystemExit(1)


@weights_group.command("fetch")
@click.argument("name")
@click.pass_obj
def fetch(obj, name) -> None:
    """Download the weight file NAME into the torch hub cache (needs the internet).

    \b
    NAME is one of the names `weights status` lists (e.g. inception_v3, fid_inception).
    The file is downloaded to <torch cache>/hub/checkpoints/<file> with torch's downloader,
    checked against the sha256 prefix its file name carries (torchvision's convention).
    Example: run_pipeline.py weights fetch fid_inception
    """
    import re

    import torch

    from pipeline.core.weights import KNOWN_WEIGHTS, torch_cache_dir

    if name not in KNOWN_WEIGHTS:
        raise click.BadParameter(
            f"unknown weight {name!r}; known: {', '.join(KNOWN_WEIGHTS)}", param_hint="NAME"
        )
    spec = KNOWN_WEIGHTS[name]
    dest = torch_cache_dir() / "hub" / "checkpoints" / spec.filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        prefix = re.search(r"-([0-9a-f]{8,})\.pth$", spec.filename)  # sha256 prefix by convention
        torch.hub.download_url_to_file(
            spec.url, str(dest), hash_prefix=prefix and prefix.group(1), progress=True
        )
    except OSError as exc:
        raise click.ClickException(
            f"could not download {spec.url}: {exc}. Without internet, copy "
            f"{spec.filename} into {dest.parent} by hand."
        ) from exc
    click.echo(f"fetched {name}: {dest}")
