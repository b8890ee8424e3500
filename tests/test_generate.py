"""Generate stage: published layout, manifest, two checkpoints, resume, error rows,
determinism, equality with a direct NetG forward, legacy inputs through the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from pipeline.core.atomic_io import read_table
from pipeline.core.config import Config
from pipeline.core.imaging import encode_jpeg, load_rgb, to_tensor, to_uint8
from pipeline.core.layout import DatasetLayout
from pipeline.core.legacy_csv import write_pairs_csv
from pipeline.core.schemas import MANIFEST_SCHEMA
from pipeline.core.weights import WeightsError, load_into
from pipeline.generator.generation_plan import MANIFEST, generation_jobs, read_test_pairs
from pipeline.generator.networks import NetG, build_generator
from pipeline.pose.posemap import load_posemap
from stages.generate import run_generate

NGF = 4
PAIRS = 5  # first test pairs used: enough for two batches of 4 per direction
ITERS = (100, 200)


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ckpt")
    for seed, it in enumerate(ITERS):
        torch.manual_seed(seed)
        # PyTorch default init: the published N(0, 0.02) one gives near-constant grey images.
        torch.save(build_generator(NGF, init=False).state_dict(), d / f"netG_{it}.pth")
    return d


def make_cfg(root: Path, out_root: Path) -> Config:
    cfg = Config()
    cfg.dataset.root = str(root)
    cfg.output.root = str(out_root)
    cfg.ray.num_cpus = 2
    cfg.generate.ngf = NGF
    cfg.generate.batch_size = 4
    return cfg


def files_under(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*.jpg"))}


@pytest.fixture(scope="module")
def two_checkpoint_run(annotated_root, ckpt_dir, ray_session, tmp_path_factory):
    out_root = tmp_path_factory.mktemp("gen")
    cfg = make_cfg(annotated_root, out_root)
    cfg.generate.checkpoints = [str(ckpt_dir)]  # the default taken when no --checkpoint
    result = run_generate(cfg, limit=PAIRS)
    return cfg, out_root / "generated", result


def test_jobs_swap_roles_for_b_to_a():
    pairs = pd.DataFrame(
        {"imgA": ["img/a.jpg"], "imgB": ["img/b.jpg"], "fidA": ["imga"], "fidB": ["imgb"]}
    )
    jobs = generation_jobs(pairs).set_index("direction")
    assert (jobs.loc["AB", "source_id"], jobs.loc["AB", "target_id"]) == ("imga", "imgb")
    assert (jobs.loc["BA", "source_id"], jobs.loc["BA", "target_id"]) == ("imgb", "imga")
    assert jobs.loc["AB", "real_path"] == "real_images/real_B/0@imgb.jpg"
    assert jobs.loc["BA", "real_path"] == "real_images/real_A/0@imga.jpg"


def test_published_layout_and_complete_manifest(two_checkpoint_run, annotated_root):
    _, out, result = two_checkpoint_run
    pairs = read_test_pairs(annotated_root).head(PAIRS)
    expected = set()
    for n, p in enumerate(pairs.itertuples()):
        expected |= {f"real_images/real_B/{n}@{p.fidB}.jpg", f"real_images/real_A/{n}@{p.fidA}.jpg"}
        for it in ITERS:
            expected |= {
                f"fake_images/iter_{it}/fake_B/{n}@{p.fidB}.jpg",
                f"fake_images/iter_{it}/fake_A/{n}@{p.fidA}.jpg",
            }
    assert set(files_under(out)) == expected
    manifest = read_table(out / MANIFEST, MANIFEST_SCHEMA)
    assert len(manifest) == len(ITERS) * 2 * PAIRS == result.rows_out and result.errors == 0
    assert (manifest["status"] == "ok").all() and manifest["error"].isna().all()
    assert set(manifest["checkpoint"]) == {str(i) for i in ITERS}
    assert set(manifest["output_path"]) | set(manifest["real_path"]) == expected
    # The two checkpoints are different networks, so their images differ.
    a = (out / manifest["output_path"].iloc[0]).read_bytes()
    b = (out / manifest["output_path"].iloc[2 * PAIRS]).read_bytes()
    assert a != b


def test_the_ray_executor_writes_what_the_in_process_one_writes(
    two_checkpoint_run, tmp_path, ray_session
):
    cfg, out, result = two_checkpoint_run
    assert any(n.startswith("ran in this process") for n in result.notes), result.notes
    ray_cfg = make_cfg(Path(cfg.dataset.root), tmp_path)
    ray_cfg.generate.checkpoints = cfg.generate.checkpoints
    ray_cfg.generate.executor = "ray"
    ray_result = run_generate(ray_cfg, limit=PAIRS)
    assert "ran ray as configured" in ray_result.notes
    assert files_under(tmp_path / "generated") == files_under(out)
    manifests = [read_table(d / MANIFEST, MANIFEST_SCHEMA) for d in (out, tmp_path / "generated")]
    assert manifests[0].drop(columns="node").equals(manifests[1].drop(columns="node"))
    # Images made in Ray workers name their node (links to an identical job's image do not).
    assert manifests[1]["node"].notna().any()


def test_pairs_planned_and_generated_in_blocks_make_the_same_files(
    two_checkpoint_run, tmp_path, monkeypatch
):
    """Blocks of 2 test pairs (a million images plan 100,000 at a time): the same files and
    manifest; then a shorter pair table removes the rows past its end and nothing else."""
    from pipeline.generator import generation_plan

    cfg, out, _ = two_checkpoint_run
    monkeypatch.setattr(generation_plan, "PAIR_BLOCK", 2)
    blocks = make_cfg(Path(cfg.dataset.root), tmp_path)
    blocks.generate.checkpoints = cfg.generate.checkpoints
    result = run_generate(blocks, limit=PAIRS)
    # Every image counted once, made or written from an identical job of an earlier block.
    assert result.rows_in == result.rows_out == len(ITERS) * 2 * PAIRS and result.errors == 0
    assert files_under(tmp_path / "generated") == files_under(out)
    # Which of two identical jobs runs and which is linked to it may differ (node).
    manifests = [
        read_table(d / MANIFEST, MANIFEST_SCHEMA).drop(columns="node")
        for d in (out, tmp_path / "generated")
    ]
    assert manifests[0].equals(manifests[1])
    past_end = int((manifests[0]["index"] >= PAIRS - 2).sum())
    planned = run_generate(blocks, limit=PAIRS - 2, dry_run=True)
    assert "0 image(s) to make (generated" in " ".join(planned.notes)
    assert f"{past_end} earlier image(s) of changed or removed pairs to remove" in " ".join(
        planned.notes
    )
    assert files_under(tmp_path / "generated") == files_under(out)
    shorter = run_generate(blocks, limit=PAIRS - 2)
    kept = read_table(tmp_path / "generated" / MANIFEST, MANIFEST_SCHEMA).drop(columns="node")
    assert shorter.rows_out == 0 and kept["index"].max() == PAIRS - 3
    assert kept.equals(manifests[0][manifests[0]["index"] < PAIRS - 2].reset_index(drop=True))
    assert any("removed" in n for n in shorter.notes), shorter.notes
    for rel in manifests[0].loc[manifests[0]["index"] >= PAIRS - 2, "output_path"]:
        assert not (tmp_path / "generated" / rel).exists()


def test_map_sources_of_images_without_keypoints_are_none(annotated_root):
    """A block whose images have neither a map file nor a keypoints row: its jobs have no
    map source (they become error rows), the block does not fail."""
    from pipeline.generator.generation_plan import MapSources

    pairs = pd.DataFrame(
        {"imgA": ["img/a.jpg"], "imgB": ["img/b.jpg"], "fidA": ["nowhere_a"], "fidB": ["nowhere_b"]}
    )
    jobs = MapSources(annotated_root, map_files=False)(generation_jobs(pairs))
    assert jobs[["source_map", "source_keypoints", "target_keypoints"]].isna().all().all()
    known = read_test_pairs(annotated_root).head(1)
    found = MapSources(annotated_root, map_files=False)(generation_jobs(known))
    assert found["source_map"].isna().all() and found["source_keypoints"].notna().all()
    assert found["source_keypoints"].iloc[0].shape == (2 + 2 * 18,)


def test_auto_executor_takes_this_process_only_for_one_machine_and_a_small_run(ray_session):
    from pipeline.cluster.batch_stream import choose_executor

    assert choose_executor("auto", 100, 100, None, None).name == "in_process"
    assert choose_executor("in_process", 10**6, 0, 4, "auto").name == "in_process"
    for args, why in (
        ((101, 100, None, None), "101 jobs > 100"),
        ((10, 100, 2, None), "2 model actors"),
        ((10, 100, None, "10.0.0.1:6379"), "cluster address (10.0.0.1:6379)"),
    ):
        chosen = choose_executor("auto", *args)
        assert chosen.name == "ray" and why in chosen.reason


def test_real_images_of_the_same_target_are_one_file(two_checkpoint_run, annotated_root):
    _, out, _ = two_checkpoint_run
    manifest = read_table(out / MANIFEST, MANIFEST_SCHEMA)
    reals = manifest.drop_duplicates("real_path").groupby(["direction", "target_id"])["real_path"]
    shared = [paths.tolist() for _, paths in reals if len(paths) > 1]
    assert shared, "the first pairs should repeat a target"
    for paths in shared:
        assert len({(out / p).stat().st_ino for p in paths}) == 1, paths
    pairs = read_test_pairs(annotated_root)
    images = dict(zip(pairs["fidA"], pairs["imgA"], strict=True))
    images |= dict(zip(pairs["fidB"], pairs["imgB"], strict=True))
    target = annotated_root / images[manifest["target_id"].iloc[-1]]
    expected = encode_jpeg(np.asarray(load_rgb(target)))
    assert (out / manifest["real_path"].iloc[-1]).read_bytes() == expected


def test_rerun_skips_everything_done(two_checkpoint_run):
    cfg, out, _ = two_checkpoint_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")}
    result = run_generate(cfg, limit=PAIRS)
    assert result.skipped == len(ITERS) * 2 * PAIRS and result.rows_out == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")} == before


def test_generated_image_equals_direct_forward(two_checkpoint_run, annotated_root, ckpt_dir):
    _, out, _ = two_checkpoint_run
    manifest = read_table(out / MANIFEST)
    net = load_into(NetG(ngf=NGF), ckpt_dir / "netG_200.pth").eval()
    layout = DatasetLayout(annotated_root)
    pairs = read_test_pairs(annotated_root)
    rows = manifest[manifest["checkpoint"] == "200"].groupby("direction").head(2)
    for r in rows.itertuples():
        pair = pairs.iloc[r.index]
        source = pair.imgA if r.direction == "AB" else pair.imgB
        maps = np.concatenate(
            [load_posemap(layout.posemap("test", f)) for f in (r.source_id, r.target_id)], 2
        )
        with torch.no_grad():
            y = net(
                to_tensor(np.array(load_rgb(annotated_root / source)))[None],
                torch.from_numpy(maps).permute(2, 0, 1).float()[None],
            )
        assert (out / r.output_path).read_bytes() == encode_jpeg(to_uint8(y)[0]), r.output_path


def test_missing_image_is_an_error_row_rerun_completes_identically(
    two_checkpoint_run, annotated_root, ckpt_dir, tmp_path, ray_session
):
    _, clean_out, _ = two_checkpoint_run
    root = tmp_path / "data"
    shutil.copytree(annotated_root, root)
    pairs = read_test_pairs(root).head(PAIRS)
    removed = pairs["imgA"].iloc[0]
    (root / removed).rename(tmp_path / "kept.jpg")
    cfg = make_cfg(root, tmp_path)
    result = run_generate(cfg, checkpoints=[str(ckpt_dir / "netG_200.pth")], limit=PAIRS)
    manifest = read_table(tmp_path / "generated" / MANIFEST)
    fid = pairs["fidA"].iloc[0]
    involved = (manifest["source_id"] == fid) | (manifest["target_id"] == fid)
    assert (
        manifest.loc[involved, "status"] == "error"
    ).all() and result.errors == involved.sum() > 0
    assert manifest.loc[involved, "error"].str.contains("cannot read").all()
    assert (manifest.loc[~involved, "status"] == "ok").all() and (~involved).sum() > 0

    (tmp_path / "kept.jpg").rename(root / removed)
    again = run_generate(cfg, checkpoints=[str(ckpt_dir / "netG_200.pth")], limit=PAIRS)
    assert again.rows_out == involved.sum() and again.skipped == (~involved).sum()
    assert (read_table(tmp_path / "generated" / MANIFEST)["status"] == "ok").all()
    # Same inputs, same images: the resumed run matches the clean run byte for byte.
    clean = {k: v for k, v in files_under(clean_out).items() if "iter_100" not in k}
    assert files_under(tmp_path / "generated") == clean


def test_bad_checkpoint_is_named_before_any_work(annotated_root, tmp_path):
    wide = tmp_path / "netG_7.pth"
    torch.save(build_generator(NGF * 2).state_dict(), wide)
    with pytest.raises(WeightsError, match=r"netG_7\.pth.*shape mismatch"):
        run_generate(make_cfg(annotated_root, tmp_path), checkpoints=[str(wide)])
    assert not (tmp_path / "generated").exists()


def test_cli_legacy_pairs_csv_and_maps_rendered_from_keypoints(
    two_checkpoint_run, annotated_root, ckpt_dir, tmp_path, ray_session
):
    """Without npz maps and without a pairs table the stage renders maps from the keypoints
    table and reads test_img_pairs.csv: the images equal those made from the npz maps."""
    from cli.main import cli

    _, clean_out, _ = two_checkpoint_run
    root = tmp_path / "data"
    shutil.copytree(
        annotated_root, root, ignore=shutil.ignore_patterns("*_pose_maps", "pairs.parquet")
    )
    layout = DatasetLayout(root)
    write_pairs_csv(read_test_pairs(annotated_root).head(2), layout.pairs_csv("test"))
    res = CliRunner().invoke(
        cli,
        [
            "--set",
            f"dataset.root={root}",
            "--set",
            "ray.num_cpus=2",
            "generate",
            "--checkpoint",
            str(ckpt_dir / "netG_100.pth"),
            "--ngf",
            str(NGF),
            "--out",
            str(tmp_path / "g"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "4 in, 4 out, 0 errors" in res.output  # 2 pairs x 2 directions, 1 checkpoint
    got, clean = files_under(tmp_path / "g"), files_under(clean_out)
    assert len(got) == 8 and got.keys() <= clean.keys()
    assert all(got[k] == clean[k] for k in got)


def generated_copy(annotated_root: Path, ckpt_dir: Path, tmp_path: Path):
    """A copy of the annotated tree with its first PAIRS test pairs generated: (root, cfg,
    generation folder)."""
    root = tmp_path / "data"
    shutil.copytree(annotated_root, root)
    cfg = make_cfg(root, tmp_path)
    cfg.generate.checkpoints = [str(ckpt_dir / "netG_100.pth")]
    run_generate(cfg, limit=PAIRS)
    return root, cfg, tmp_path / "generated"


def test_changed_image_regenerates_only_its_pairs(annotated_root, ckpt_dir, tmp_path, ray_session):
    root, cfg, out = generated_copy(annotated_root, ckpt_dir, tmp_path)
    before = {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*.jpg")}
    pairs = read_test_pairs(root).head(PAIRS)
    changed = pairs["imgA"].iloc[0]
    im = np.asarray(load_rgb(root / changed)).copy()
    im[:8] = 0  # same name, new bytes
    (root / changed).write_bytes(encode_jpeg(im))
    again = run_generate(cfg, limit=PAIRS)
    involved = int(pairs["imgA"].eq(changed).sum() + pairs["imgB"].eq(changed).sum())
    # Both directions of every pair that shows the image, made or copied again; no others.
    assert again.rows_out == 2 * involved and again.skipped == 2 * PAIRS - 2 * involved
    manifest = read_table(out / MANIFEST, MANIFEST_SCHEMA)
    assert len(manifest) == 2 * PAIRS and (manifest["status"] == "ok").all()
    after = {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*.jpg")}
    assert sum(before[k] != after[k] for k in before) >= 2 * involved
    fid = pairs.loc[pairs["imgA"] == changed, "fidA"].iloc[0]
    untouched = manifest[(manifest["source_id"] != fid) & (manifest["target_id"] != fid)]
    assert len(untouched) == 2 * PAIRS - 2 * involved
    assert all(before[p] == after[p] for p in untouched["output_path"])


def test_removed_pairs_take_their_images_and_only_those(
    annotated_root, ckpt_dir, tmp_path, ray_session
):
    root, cfg, out = generated_copy(annotated_root, ckpt_dir, tmp_path)
    manifest = read_table(out / MANIFEST, MANIFEST_SCHEMA)

    def files() -> dict[str, tuple[bytes, int]]:
        return {
            str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in out.rglob("*.jpg")
        }

    before = files()
    again = run_generate(cfg, limit=PAIRS - 2)  # the last two pairs left the pair set
    removed = manifest["index"] >= PAIRS - 2
    kept = manifest[~removed]
    gone = set(manifest.loc[removed, "output_path"])
    gone |= set(manifest.loc[removed, "real_path"]) - set(kept["real_path"])
    after = files()
    assert set(before) - set(after) == gone and set(after) <= set(before)
    assert all(after[k] == before[k] for k in after), "a kept image was rewritten"
    assert again.rows_out == 0 and again.skipped == 2 * (PAIRS - 2)
    left = read_table(out / MANIFEST, MANIFEST_SCHEMA)
    pd.testing.assert_frame_equal(left, kept.reset_index(drop=True))
