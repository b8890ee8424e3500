"""End to end: the `run` DAG (skips on a second run, --force/--only), fault tolerance
(killed worker, killed driver, corrupted images) and input refusals."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from pipeline.core.config import load_config
from pipeline.core.layout import OutputLayout
from pipeline.generator.networks import build_generator
from pipeline.synthetic.tree import GROUND_TRUTH_CSV, write_synthetic_tree
from stages.dag import BY_NAME, plan_run, run_dag

REPO = Path(__file__).resolve().parent.parent
TINY = [
    "train.ngf=4",
    "train.ndf=4",
    "train.iterations=2",
    "train.batch_size=2",
    "train.ckpt_every=2",
    "train.sample_every=2",
    "train.quality_pairs=4",
    "generate.ngf=4",
    "generate.batch_size=4",
    "evaluate.metrics=[ssim,psnr]",
    "ray.num_cpus=2",
]


def tiny_overrides(root: Path, out: Path, extra: list[str] = ()) -> list[str]:
    return [
        f"dataset.root={root}",
        f"output.root={out}",
        f"keypoints.annotations={root / GROUND_TRUTH_CSV}",
        f"keypoints.compare={root / GROUND_TRUTH_CSV}",
        *TINY,
        *extra,
    ]


def random_checkpoint(path: Path, ngf: int = 4) -> Path:
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_generator(ngf).state_dict(), path)
    return path


def run_cli(args: list[str], env_extra: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, str(REPO / "run_pipeline.py"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kwargs,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def tree_files(root: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob(pattern))}


def earlier_outputs(stage: str, cfg) -> dict[str, bytes]:
    """The bytes of what a fresh run of `stage` moves aside, by path under the folder they
    go to."""
    out = {}
    for path in BY_NAME[stage].previous(cfg):
        if path.is_file():
            out[path.name] = path.read_bytes()
        elif path.is_dir():
            out |= {str(Path(path.name, rel)): data for rel, data in file_bytes(path).items()}
    assert out, f"{stage} has nothing to move aside"
    return out


def moved_aside(stage: str, cfg, rows: pd.DataFrame) -> dict[str, bytes]:
    """The bytes under OUT/<stage>.prev/<run id>/ of the run whose manifest rows are `rows`."""
    return file_bytes(OutputLayout(cfg.output.root).previous(stage, rows.loc[stage, "run_id"]))


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_run_twice_does_no_work_the_second_time(tmp_path, ray_session):
    root = tmp_path / "data"
    write_synthetic_tree(root, identities=6, poses_per_identity=3, seed=5)
    cfg = load_config(REPO / "configs" / "demo.yaml", tiny_overrides(root, tmp_path / "out"))
    said: list[str] = []
    first = run_dag(cfg, plan_run(), echo=said.append)
    assert first["status"].tolist() == ["ran"] * 7, first[["stage", "status", "reason"]]
    # Before each stage: what it does, in a line made from the config.
    said = "\n".join(said)
    for stage, does in (
        ("keypoints", "import keypoints from"),
        ("train", "train NetG (ngf 4) against NetD (ndf 4) up to iteration 2"),
        ("generate", "generate every test pair in both directions"),
    ):
        assert f"[{stage}] running\n    - never ran\n    does: {does}" in said, said
    second = run_dag(cfg, plan_run(), echo=lambda s: None)
    assert second["status"].tolist() == ["skipped"] * 7
    assert (tmp_path / "out" / "reports" / "demo" / "report.html").exists()
    # Forced stages start from scratch with their earlier outputs moved aside, bytes and
    # all; their rewritten outputs are the same, so generate and train stay up to date.
    redo = ("keypoints", "posemaps", "pairs", "evaluate", "report")
    earlier = {name: earlier_outputs(name, cfg) for name in redo}
    forced = run_dag(cfg, plan_run(force=redo), echo=lambda s: None).set_index("stage")
    assert (forced.loc[list(redo), "status"] == "ran").all(), forced[["status", "reason"]]
    assert (forced.loc[["train", "generate"], "status"] == "skipped").all()
    for name in redo:
        assert moved_aside(name, cfg, forced) == earlier[name], name
    only = run_dag(cfg, plan_run(only="pairs"), echo=lambda s: None)
    assert only["stage"].tolist() == ["pairs"] and only["status"].tolist() == ["ran"]
    manifest = pd.read_parquet(tmp_path / "out" / "run_manifest.parquet")
    assert manifest["run_id"].nunique() == 4 and len(manifest) == 7 + 7 + 7 + 1
    assert {"fingerprint", "config_hash", "packages", "rows_in", "rows_out", "errors"} <= set(
        manifest.columns
    )
    # The driver's peak so far, recorded as each stage ends: it never falls within a run.
    for _, peaks in manifest.groupby("run_id", sort=False)["driver_peak_mib"]:
        assert (peaks > 0).all() and peaks.is_monotonic_increasing, peaks
    # A changed output-defining key reruns that stage from scratch, and what depends on it.
    cfg2 = load_config(
        REPO / "configs" / "demo.yaml",
        tiny_overrides(root, tmp_path / "out", ["evaluate.metrics=[ssim]", "generate.dtype=fp32"]),
    )
    earlier = {name: earlier_outputs(name, cfg2) for name in ("generate", "evaluate")}
    third = run_dag(cfg2, plan_run(), echo=lambda s: None).set_index("stage")
    assert third.loc["train", "status"] == "skipped"
    assert (third.loc[["generate", "evaluate", "report"], "status"] == "ran").all()
    for name, files in earlier.items():
        assert moved_aside(name, cfg2, third) == files, name

    # `clean` lists what reruns moved aside and deletes it only with --yes, nothing else.
    out = tmp_path / "out"
    aside = sorted(out.glob("*.prev/*"))
    assert {p.parent.name for p in aside} == {f"{n}.prev" for n in (*redo, "generate")}
    kept = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and ".prev" not in str(p)}
    clean = ["--set", f"output.root={out}", "clean"]
    listed = CliRunner().invoke(cli, clean)
    assert listed.exit_code == 0, listed.output
    assert all(f"kept  {p}" in listed.output for p in aside) and "deleting" not in listed.output
    assert sorted(out.glob("*.prev/*")) == aside
    deleted = CliRunner().invoke(cli, [*clean, "--yes"])
    assert deleted.exit_code == 0, deleted.output
    assert all(f"deleting  {p}" in deleted.output for p in aside)
    assert not any(out.glob("*.prev/*"))
    assert {p: p.read_bytes() for p in kept} == kept


@pytest.fixture(scope="module")
def fault_tree(tmp_path_factory) -> tuple[Path, Path]:
    """A pristine tree (copied per test) and a random generator checkpoint."""
    base = tmp_path_factory.mktemp("fault")
    write_synthetic_tree(base / "data", identities=10, poses_per_identity=4, seed=9)
    return base / "data", random_checkpoint(base / "ckpt" / "netG_7.pth")


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def run_args(root: Path, out: Path, ckpt: Path) -> list[str]:
    sets = tiny_overrides(root, out, [f"generate.checkpoints=[{ckpt}]"])
    return [
        "--config",
        str(REPO / "configs" / "demo.yaml"),
        *sum((["--set", s] for s in sets), []),
        "run",
    ]


@pytest.mark.slow
def test_killed_workers_are_retried_and_outputs_equal_a_clean_run(tmp_path, fault_tree):
    source, ckpt = fault_tree
    clean, faulty = copy_tree(source, tmp_path / "clean"), copy_tree(source, tmp_path / "faulty")
    finish(run_cli(run_args(clean, tmp_path / "out_clean", ckpt)))
    args = run_args(faulty, tmp_path / "out_faulty", ckpt)
    finish(run_cli([*args, "--only", "keypoints"]))
    # posemaps runs Ray tasks (retried when their worker dies); generate runs NetG in Ray
    # Data actors (restarted, their batches resubmitted). The plain `run` does the rest.
    # Small runs would stay in the driver.
    ray_generate = ["--set", "generate.executor=ray"]
    ray_posemaps = ["--only", "posemaps", "--set", "posemaps.executor=ray"]
    for stage, nth, extra in (
        ("posemaps", 1, ray_posemaps),
        ("generate", 2, ray_generate),
    ):
        marker = tmp_path / f"{stage}.killed"
        out = finish(
            run_cli(
                [*args, *extra],
                {
                    "POSE_PIPELINE_FAULT": f"{stage}:{nth}",
                    "POSE_PIPELINE_FAULT_MARKER": str(marker),
                },
            )
        )
        assert marker.exists(), f"the fault hook never fired for {stage}:\n{out[-2000:]}"
    assert tree_files(clean, "*.npz") == tree_files(faulty, "*.npz")
    assert tree_files(tmp_path / "out_clean" / "generated", "*.jpg") == tree_files(
        tmp_path / "out_faulty" / "generated", "*.jpg"
    )
    m = pd.read_parquet(tmp_path / "out_faulty" / "generated" / "manifest.parquet")
    assert (m["status"] == "ok").all() and not m.duplicated(
        ["checkpoint", "direction", "index"]
    ).any()


@pytest.mark.slow
def test_killed_driver_resumes_to_the_clean_result(tmp_path, fault_tree):
    source, ckpt = fault_tree
    clean, killed = copy_tree(source, tmp_path / "clean"), copy_tree(source, tmp_path / "killed")
    finish(run_cli(run_args(clean, tmp_path / "out_clean", ckpt)))
    # Slow batches, so the driver surely dies with generation under way.
    slow = {"POSE_PIPELINE_BATCH_DELAY": "generate:1.0"}
    proc = run_cli(run_args(killed, tmp_path / "out_killed", ckpt), env_extra=slow)
    fakes = tmp_path / "out_killed" / "generated" / "fake_images"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not any(fakes.rglob("*.jpg")):
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out = finish(run_cli(run_args(killed, tmp_path / "out_killed", ckpt)))
    assert "[keypoints] up to date" in out and "[generate] resuming" in out
    for table in ("tables/keypoints.parquet", "tables/pairs.parquet"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(clean / table), pd.read_parquet(killed / table)
        )
    key = ["checkpoint", "direction", "index"]
    a = pd.read_parquet(tmp_path / "out_clean" / "generated" / "manifest.parquet").sort_values(
        key, ignore_index=True
    )
    b = pd.read_parquet(tmp_path / "out_killed" / "generated" / "manifest.parquet").sort_values(
        key, ignore_index=True
    )
    # `node` says where each image was made: another Ray session, another node id.
    pd.testing.assert_frame_equal(a.drop(columns="node"), b.drop(columns="node"))
    assert tree_files(tmp_path / "out_clean" / "generated", "*.jpg") == tree_files(
        tmp_path / "out_killed" / "generated", "*.jpg"
    )
    ssim = "evaluation/per_image/ssim.parquet"
    va = pd.read_parquet(tmp_path / "out_clean" / ssim).sort_values(
        ["checkpoint", "direction", "name"]
    )
    vb = pd.read_parquet(tmp_path / "out_killed" / ssim).sort_values(
        ["checkpoint", "direction", "name"]
    )
    np.testing.assert_array_equal(va["value"].to_numpy(), vb["value"].to_numpy())


@pytest.mark.slow
def test_corrupted_images_become_error_rows_and_the_report_counts_them(tmp_path, fault_tree):
    source, ckpt = fault_tree
    root = copy_tree(source, tmp_path / "data")
    test_images = pd.read_csv(root / "test_img_list.csv")["img"].tolist()
    bad = {
        test_images[0]: b"",
        test_images[5]: (root / test_images[5]).read_bytes()[:300],
        test_images[-1]: b"this is not a jpeg",
    }
    for rel, data in bad.items():
        (root / rel).write_bytes(data)
    finish(run_cli(run_args(root, tmp_path / "out", ckpt)))
    m = pd.read_parquet(tmp_path / "out" / "generated" / "manifest.parquet")
    errors = m[m["status"] == "error"]
    bad_ids = {rel.replace("/", "").rsplit(".", 1)[0] for rel in bad}
    assert len(errors) and set(errors["source_id"]) | set(errors["target_id"]) >= bad_ids
    assert errors["error"].str.contains("empty file|not a readable image").all()
    involved = m["source_id"].isin(bad_ids) | m["target_id"].isin(bad_ids)
    assert (m.loc[~involved, "status"] == "ok").all() and (
        m.loc[involved, "status"] == "error"
    ).all()
    report = (tmp_path / "out" / "reports" / "demo" / "report.md").read_text()
    assert f"| generate | {int((m['status'] == 'ok').sum())} images" in report
    assert f"| {len(errors)} (" in report


def test_pairs_csv_escaping_the_root_is_refused_naming_rows(tmp_path, annotated_root):
    bad = tmp_path / "pairs.csv"
    pd.DataFrame(
        {"imgA": ["img/ok.jpg", "../outside.jpg"], "imgB": ["/etc/passwd", "img/ok2.jpg"]}
    ).to_csv(bad, index=False)
    res = CliRunner().invoke(
        cli,
        [
            "--set",
            f"dataset.root={annotated_root}",
            "--set",
            f"output.root={tmp_path / 'o'}",
            "generate",
            "--pairs",
            str(bad),
            "--checkpoint",
            str(random_checkpoint(tmp_path / "netG_1.pth")),
            "--ngf",
            "4",
        ],
    )
    assert res.exit_code != 0
    text = res.output + str(res.exception or "")
    assert "row 2" in text and "row 3" in text and "outside the dataset root" in text
    assert not (tmp_path / "o" / "generated" / "manifest.parquet").exists()


@pytest.mark.parametrize(
    "setting, field",
    [("train.iterations=many", "train.iterations"), ("generate.colour=red", "generate.colour")],
)
def test_bad_config_names_the_field_and_writes_nothing(tmp_path, setting, field):
    res = CliRunner().invoke(
        cli, ["--set", f"output.root={tmp_path / 'out'}", "--set", setting, "run"]
    )
    assert res.exit_code == 2 and field in res.output
    assert not (tmp_path / "out").exists()
