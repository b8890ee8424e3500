"""Nothing lost, nothing stale, nothing hangs (issue 20): a copied dataset and output root
are up to date where they land and never touch the original, damaged tables make their
stage stale instead of crashing, inputs are checked before anything is written, one run at
a time holds an output root, and Ctrl-C keeps the finished work."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from test_pipeline_run import TINY, random_checkpoint, run_cli

from cli.main import cli
from pipeline.core.atomic_io import read_table
from pipeline.core.config import load_config
from pipeline.core.errors import ConfigError
from pipeline.core.layout import DatasetLayout, EvaluationLayout, OutputLayout
from pipeline.core.partitioned import part_paths
from pipeline.synthetic.tree import write_synthetic_tree
from stages.dag import plan_run, run_dag

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs" / "demo.yaml"


def overrides(root: Path, out: Path, ckpt: Path) -> list[str]:
    # Nothing but the roots, the sizes and a checkpoint: demo.yaml's dataset files
    # (keypoints.compare) must resolve against the dataset root given here.
    return [
        f"dataset.root={root}",
        f"output.root={out}",
        *TINY,
        f"generate.checkpoints=[{ckpt}]",
    ]


def fingerprint_tree(*roots: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under `roots` with its size, mtime and content hash."""
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.md5(p.read_bytes()).hexdigest())
        for root in roots
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def copy_tree(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


def echo_run(cfg, **plan) -> tuple[pd.DataFrame, str]:
    lines: list[str] = []
    rows = run_dag(cfg, plan_run(**plan), echo=lines.append)
    return rows.set_index("stage"), "\n".join(lines)


def status_lines(cfg) -> str:
    lines: list[str] = []
    run_dag(cfg, plan_run(), echo=lines.append, dry_run=True)
    return "\n".join(lines)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_session):
    """A dataset root and an output root after a whole DAG run (read-only: copy it)."""
    base = tmp_path_factory.mktemp("finished")
    root, out = base / "DA", base / "OA"
    write_synthetic_tree(root, identities=4, poses_per_identity=3, seed=21)
    ckpt = random_checkpoint(base / "weights" / "netG_7.pth")
    cfg = load_config(DEMO, overrides(root, out, ckpt))
    rows, _ = echo_run(cfg)
    assert (rows["status"] != "failed").all(), rows
    return root, out, ckpt


@pytest.mark.slow
def test_copied_roots_are_up_to_date_and_every_stage_on_the_copy_leaves_the_original_alone(
    finished, tmp_path
):
    root, out, ckpt = finished
    before = fingerprint_tree(root, out)
    copy_root, copy_out = tmp_path / "DB", tmp_path / "OB"
    copy_tree(root, copy_root)
    copy_tree(out, copy_out)
    cfg = load_config(DEMO, overrides(copy_root, copy_out, ckpt))
    said = status_lines(cfg)
    stages = ("keypoints", "posemaps", "pairs", "generate", "evaluate", "report")
    for stage in stages:
        assert f"[{stage}] up to date" in said, said
    rows, _ = echo_run(cfg)
    assert set(rows["status"]) == {"skipped", "not needed"}, rows
    for stage in stages:
        rows, said = echo_run(cfg, only=stage)
        assert rows.loc[stage, "status"] == "ran", said
        assert "removed" not in said, said
        assert fingerprint_tree(root, out) == before, f"{stage} on the copy changed the original"
    # Paths stored in the copy's records are relative to their roots.
    index = pd.read_parquet(DatasetLayout(copy_root).posemap_index)
    assert not index["target"].map(os.path.isabs).any()
    state = json.loads((OutputLayout(copy_out).state / "posemaps.json").read_text())
    assert all(k.startswith(("dataset:", "output:")) for k in state["inputs"]), state["inputs"]
    manifest = pd.read_parquet(OutputLayout(copy_out).run_manifest)
    moved = [p for m in manifest["moved_aside"].dropna() for p in json.loads(m)]
    assert moved and not any(os.path.isabs(p) for p in moved)


@pytest.mark.slow
def test_posemaps_given_an_index_of_absolute_paths_deletes_nothing_outside_its_root(
    finished, tmp_path
):
    """Indexes written before paths were relative name the original's maps: a copy must
    neither delete them nor count them as its own."""
    root, out, ckpt = finished
    copy_root, copy_out = tmp_path / "DB", tmp_path / "OB"
    copy_tree(root, copy_root)
    copy_tree(out, copy_out)
    index_path = DatasetLayout(copy_root).posemap_index
    index = pd.read_parquet(index_path)
    index["target"] = [str(root / t) for t in index["target"]]  # the old format, original's
    index.to_parquet(index_path)
    before = fingerprint_tree(root)
    from stages.posemaps import run_posemaps

    result = run_posemaps(load_config(DEMO, overrides(copy_root, copy_out, ckpt)), progress=False)
    assert not any("removed" in n for n in result.notes), result.notes
    assert fingerprint_tree(root) == before


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.slow
def test_damaged_tables_make_their_stage_stale_with_the_reason_and_are_moved_aside(
    finished, tmp_path
):
    root, out, ckpt = finished
    copy_root, copy_out = tmp_path / "DB", tmp_path / "OB"
    copy_tree(root, copy_root)
    copy_tree(out, copy_out)
    damaged = {
        # The keypoints table is partitioned (core.partitioned): one of its parts.
        "keypoints": part_paths(DatasetLayout(copy_root).keypoints_table)[0],
        "generate": OutputLayout(copy_out).manifest,
        "evaluate": EvaluationLayout(OutputLayout(copy_out).evaluation).per_image("ssim"),
    }
    for path in damaged.values():
        truncate(path)
    args = ["--config", str(DEMO)]
    for o in overrides(copy_root, copy_out, ckpt):
        args += ["--set", o]
    # A stage reading a damaged table names the file in one paragraph.
    res = CliRunner().invoke(cli, ["posemaps", *args])
    assert res.exit_code == 2, res.output
    assert str(damaged["keypoints"]) in res.output and "Traceback" not in res.output
    said = status_lines(load_config(DEMO, overrides(copy_root, copy_out, ckpt)))
    for path in damaged.values():
        assert f"{path} is unreadable" in said, said
    rows, said = echo_run(load_config(DEMO, overrides(copy_root, copy_out, ckpt)))
    for stage, path in damaged.items():
        assert rows.loc[stage, "status"] == "ran", said
        assert pd.read_parquet(path) is not None
        aside = json.loads(rows.loc[stage, "moved_aside"])
        assert [Path(p).name for p in aside] == [path.name]
        assert (copy_out / aside[0]).read_bytes() != path.read_bytes()
    scores = pd.read_parquet(damaged["evaluate"])
    assert len(scores) and scores["value"].notna().all()
    # The stage on its own: --force recovers (it used to estimate, then crash reading the
    # damaged table it was replacing).
    truncate(damaged["keypoints"])
    res = CliRunner().invoke(cli, ["keypoints", "--force", *args])
    assert res.exit_code == 0, res.output
    assert len(read_table(DatasetLayout(copy_root).keypoints_table)) == 12


def test_preflight_refuses_a_missing_dataset_root_before_writing_anything(tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli, ["run", "--set", f"dataset.root={tmp_path / 'nowhere'}", "--set", f"output.root={out}"]
    )
    assert res.exit_code == 2, res.output
    assert "dataset.root" in res.output and "is not a directory" in res.output
    assert not out.exists(), "a refused run wrote to the output root"


def test_preflight_refuses_an_empty_test_list_and_a_missing_dataset_file(synth_root, tmp_path):
    root = tmp_path / "data"
    copy_tree(synth_root, root)
    (root / "test_img_list.csv").write_text("img\n")
    out = tmp_path / "out"
    cfg = load_config(DEMO, [f"dataset.root={root}", f"output.root={out}"])
    (root / "ground_truth_keypoints.csv").unlink()
    with pytest.raises(ConfigError) as err:
        run_dag(cfg, plan_run(), echo=lambda s: None)
    message = str(err.value)
    assert "test_img_list.csv lists no image" in message
    assert f"keypoints.compare: {root / 'ground_truth_keypoints.csv'} not found" in message
    assert not out.exists()


def test_preflight_refuses_more_train_workers_than_a_local_ray_holds(synth_root, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli,
        ["run", "--set", f"dataset.root={synth_root}", "--set", f"output.root={out}",
         "--set", "ray.num_cpus=2", "--set", "train.num_workers=100"],
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "train.num_workers = 100" in res.output and "nothing was started" in res.output
    assert not out.exists()


def test_an_unknown_metric_is_refused_at_config_load_before_anything_moves(tmp_path):
    with pytest.raises(ConfigError, match=r"evaluate\.metrics.*'ssmi'.*known: ssim"):
        load_config(None, ["evaluate.metrics=ssim,ssmi"])
    res = CliRunner().invoke(cli, ["run", "--set", "evaluate.metrics=[ssmi]"])
    assert res.exit_code == 2 and "ssmi" in res.output and "Traceback" not in res.output


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.mark.slow
def test_a_second_run_on_a_held_output_root_stops_naming_the_holder_and_ctrl_c_exits_130(
    synth_root, tmp_path
):
    root, out = tmp_path / "data", tmp_path / "out"
    copy_tree(synth_root, root)
    ckpt = random_checkpoint(tmp_path / "weights" / "netG_3.pth")
    args = ["run", "--config", str(DEMO)]
    for o in [*overrides(root, out, ckpt), "keypoints.annotations=ground_truth_keypoints.csv"]:
        args += ["--set", o]
    # posemaps holds its one batch for a minute: the run is surely inside it when stopped.
    first = run_cli(args, env_extra={"POSE_PIPELINE_BATCH_DELAY": "posemaps:60"})
    lock = OutputLayout(out).lock
    try:
        wait_for(lambda: lock.is_file() and lock.read_text().strip(), 120, "the first run's lock")
        wait_for(lambda: (root / "tables" / "keypoints.parquet").exists(), 120, "keypoints")
        second = run_cli(args)
        said, _ = second.communicate(timeout=120)
        assert second.returncode == 2, said
        assert f"pid {first.pid}" in said and "--wait" in said, said
        os.killpg(first.pid, signal.SIGINT)
        said, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 130, said
    assert "Interrupted" in said and "Run the same command again to resume" in said, said
    assert "Traceback" not in said, said
    manifest = pd.read_parquet(OutputLayout(out).run_manifest)
    assert manifest.set_index("stage").loc["posemaps", "status"] == "interrupted"
    assert not lock.read_text().strip(), "the holder record outlived its run"


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    from pipeline.core.run_lock import OutputLockedError, output_lock

    out = tmp_path / "out"
    lock = OutputLayout(out).lock
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"command": "run", "pid": 999_999_999, "host": "h"}))
    said: list[str] = []
    with output_lock(out, "run", echo=said.append):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        # Held: a second holder in another process is refused, naming this one.
        probe = subprocess.run(
            [
                os.sys.executable,
                "-c",
                "from pipeline.core.run_lock import output_lock; "
                f"output_lock({str(out)!r}, 'second').__enter__()",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert OutputLockedError.__name__ in probe.stderr
        assert f"pid {os.getpid()}" in probe.stderr
    assert said and "taking over the lock left by run (pid 999999999" in said[0]


@pytest.mark.slow
def test_a_config_key_newer_than_the_record_is_adopted_then_watched(finished, tmp_path):
    """An upgrade that declares a new output-defining key redoes nothing; the key's value
    is then recorded, so a later change of it is seen."""
    root, out, ckpt = finished
    copy_root, copy_out = tmp_path / "DB", tmp_path / "OB"
    copy_tree(root, copy_root)
    copy_tree(out, copy_out)
    state_file = OutputLayout(copy_out).state / "generate.json"
    state = json.loads(state_file.read_text())
    del state["config"]["generate.channels_last"]  # as written before it was declared
    state_file.write_text(json.dumps(state))
    cfg = load_config(DEMO, overrides(copy_root, copy_out, ckpt))
    assert "[generate] up to date" in status_lines(cfg)
    rows, _ = echo_run(cfg)
    assert rows.loc["generate", "status"] == "skipped"
    assert json.loads(state_file.read_text())["config"]["generate.channels_last"] is True
    later = [*overrides(copy_root, copy_out, ckpt), "generate.channels_last=false"]
    changed = load_config(DEMO, later)
    assert "generate.channels_last: True -> False" in status_lines(changed)
