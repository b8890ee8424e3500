"""The DAG reruns only for a reason it names, and never deletes earlier work: code and
non-defining config changes, mtimes, more iterations, changed and added images, a changed
pair rule (training stops; --force keeps the old run aside), dry runs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import pandas as pd
import pytest
from test_pipeline_run import TINY, random_checkpoint, tiny_overrides

from pipeline.core.config import load_config
from pipeline.core.errors import DataError
from pipeline.core.layout import DatasetLayout, OutputLayout
from pipeline.core.legacy_csv import read_image_list, write_image_list
from pipeline.pose.posemap import render_map
from pipeline.synthetic.tree import GROUND_TRUTH_CSV, write_synthetic_tree
from pipeline.training.data import PairImages, load_train_pairs
from stages.dag import StaleStageError, plan_run, run_dag

REPO = Path(__file__).resolve().parent.parent


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for root in roots
        for p in root.rglob("*")
        if p.is_file()
    }


def run(cfg, **plan) -> pd.DataFrame:
    lines: list[str] = []
    rows = run_dag(cfg, plan_run(**plan), echo=lines.append).set_index("stage")
    rows.attrs["echo"] = "\n".join(lines)
    return rows


def dry_run(cfg, **plan) -> str:
    lines: list[str] = []
    run_dag(cfg, plan_run(**plan), echo=lines.append, dry_run=True)
    return "\n".join(lines)


@pytest.mark.slow
def test_reruns_explain_themselves_and_keep_earlier_work(tmp_path, ray_session):
    root, out = tmp_path / "data", tmp_path / "out"
    write_synthetic_tree(root, identities=4, poses_per_identity=3, seed=11)
    base = [
        "keypoints.estimator=mediapipe",
        f"dataset.root={root}",
        f"output.root={out}",
        f"keypoints.compare={root / GROUND_TRUTH_CSV}",
        *TINY,
    ]

    def cfg(*extra):
        return load_config(REPO / "configs" / "demo.yaml", [*base, *extra])

    first = run(cfg())
    assert (first["status"] == "ran").all(), first[["status", "reason"]]
    layout, outputs = DatasetLayout(root), OutputLayout(out)

    # A dry run assesses and changes nothing, not even the digest cache.
    before = snapshot(root, out)
    assert dry_run(cfg()).count("up to date") == 7
    assert snapshot(root, out) == before

    # Workers, batch sizes, concurrency and mtimes do not define outputs.
    for p in layout.images.rglob("*.jpg"):
        os.utime(p, (1, 1))
    quiet = run(
        cfg(
            "train.num_workers=2",
            "generate.batch_size=3",
            "evaluate.concurrency=2",
            "keypoints.batch_size=2",
        )
    )
    assert (quiet["status"] == "skipped").all(), quiet[["status", "reason"]]

    # More iterations continue the run; generation and evaluation add the new checkpoint only.
    text = dry_run(cfg("train.iterations=4"))
    assert "[train] would resume" in text and "train.iterations 2 -> 4" in text
    more = run(cfg("train.iterations=4"))
    assert more.loc["train", "status"] == "ran" and more.loc["keypoints", "status"] == "skipped"
    assert {p.name for p in outputs.checkpoints.glob("netG_*.pth")} == {"netG_2.pth", "netG_4.pth"}
    manifest = pd.read_parquet(outputs.manifest)
    per_ckpt = manifest.groupby("checkpoint").size()
    assert set(per_ckpt.index) == {"2", "4"} and per_ckpt["2"] == per_ckpt["4"]
    assert more.loc["generate", "reused"] == per_ckpt["2"]

    # One image's bytes change and five are added: only those six are estimated.
    listed = read_image_list(layout.image_list("train"), root)
    changed = root / listed[0]
    changed.write_bytes((root / listed[1]).read_bytes())
    extra_root = tmp_path / "extra"
    write_synthetic_tree(extra_root, identities=2, poses_per_identity=3, seed=12)
    extra = read_image_list(DatasetLayout(extra_root).image_list("train"), extra_root)
    extra += read_image_list(DatasetLayout(extra_root).image_list("test"), extra_root)
    added = [rel.replace("img/", "img/EXTRA_", 1) for rel in extra[:5]]  # new identities
    for rel, new in zip(extra[:5], added, strict=True):
        (root / new).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(extra_root / rel, root / new)
    write_image_list(listed + added, layout.image_list("train"))
    text = dry_run(cfg("train.iterations=4"))
    assert "1 file(s) changed, 5 added, 0 removed" in text
    with pytest.raises(StaleStageError, match="--force train"):
        run(cfg("train.iterations=4"))
    rows = pd.read_parquet(outputs.run_manifest)
    last = rows[rows["run_id"] == rows["run_id"].iloc[-1]].set_index("stage")
    kp = last.loc["keypoints"]
    assert kp["rows_in"] - kp["reused"] == 6 and kp["rows_out"] == 12 + 5
    assert last.loc["pairs", "status"] == "ran" and last.loc["train", "status"] == "stopped"
    table = pd.read_parquet(layout.keypoints_table)
    assert set(added) <= set(table["path"])

    # A changed pair rule: pairs redo, train stops with the reason and both ways on.
    text = dry_run(cfg("train.iterations=4", "pairs.min_valid_keypoints=9"))
    assert "pairs.min_valid_keypoints: 8 -> 9" in text and "[train] stale" in text
    with pytest.raises(StaleStageError) as stop:
        run(cfg("train.iterations=4", "pairs.min_valid_keypoints=9"))
    assert "--force train" in str(stop.value) and "--resume train" in str(stop.value)
    assert (outputs.checkpoints / "netG_4.pth").exists()  # nothing was touched
    forced = run(cfg("train.iterations=4", "pairs.min_valid_keypoints=9"), force=("train",))
    assert forced.loc["train", "status"] == "ran"
    aside = list(out.glob("train.prev/*/train/checkpoints/netG_4.pth"))
    assert len(aside) == 1, "the earlier training run is kept, moved aside"
    assert (outputs.checkpoints / "netG_4.pth").exists()
    assert forced.loc["train", "moved_aside"] and "train.prev" in forced.loc["train", "moved_aside"]


def test_fingerprints_digest_the_configured_image_lists_and_what_pckh_uses(tmp_path):
    from pipeline.core.content_state import ContentCache
    from stages.dag import BY_NAME, take_fingerprint

    root = tmp_path / "data"
    root.mkdir()
    write_image_list(["img/a/1.jpg", "img/a/2.jpg"], root / "mine_train.csv")
    write_image_list(["img/b/1.jpg"], root / "mine_test.csv")
    sets = [
        f"dataset.root={root}",
        f"output.root={tmp_path / 'out'}",
        "dataset.train_list=mine_train.csv",
        "dataset.test_list=mine_test.csv",
    ]

    with ContentCache(tmp_path / "content.sqlite") as cache:

        def fingerprint(stage: str, *extra: str) -> str:
            return take_fingerprint(BY_NAME[stage], load_config(None, [*sets, *extra]), cache)

        before = {s: fingerprint(s).digest() for s in ("keypoints", "pairs")}
        for split in ("train", "test"):
            assert any(p.endswith(f"mine_{split}.csv") for p in fingerprint("keypoints").inputs)
        write_image_list(["img/a/1.jpg"], root / "mine_train.csv")
        for stage, digest in before.items():
            assert fingerprint(stage).digest() != digest, f"{stage} missed the edited list"
        evaluate = fingerprint("evaluate").digest()
        for key, value in (
            ("keypoints.estimator", "mediapipe"),
            ("keypoints.min_visibility", 0.7),
            ("keypoints.min_score", 0.2),
        ):
            assert fingerprint("evaluate", f"{key}={value}").digest() != evaluate, key


@pytest.mark.slow
def test_without_exported_maps_generation_makes_the_same_images(tmp_path, ray_session):
    """posemaps.export off: the posemaps stage is not needed and writes no npz; generate
    renders each map from the keypoints table and makes the bytes it makes from the npz
    files; training renders them too, and a stale map file is never read."""
    source = tmp_path / "source"
    write_synthetic_tree(source, identities=3, poses_per_identity=3, seed=12)
    ckpt = random_checkpoint(tmp_path / "ckpt" / "netG_5.pth")
    images = {}
    for export in (True, False):
        root, out = tmp_path / f"data_{export}", tmp_path / f"out_{export}"
        shutil.copytree(source, root)
        sets = tiny_overrides(root, out, [f"generate.checkpoints=[{ckpt}]",
                                          f"posemaps.export={str(export).lower()}"])  # fmt: skip
        rows = run(load_config(REPO / "configs" / "demo.yaml", sets))
        maps = sorted(DatasetLayout(root).root.glob("*_pose_maps/*.npz"))
        if export:
            assert rows.loc["posemaps", "status"] == "ran" and maps
        else:
            assert rows.loc["posemaps", "status"] == "not needed", rows.attrs["echo"]
            assert "posemaps.export is off" in rows.loc["posemaps", "reason"]
            assert maps == []
        generated = OutputLayout(out).generated
        images[export] = {
            p.relative_to(generated).as_posix(): p.read_bytes() for p in generated.rglob("*.jpg")
        }
    assert images[True] == images[False] and len(images[False]) >= 12

    # Training without map files renders every map from the keypoints: a stale map file
    # is not read.
    root, out = tmp_path / "data_False", tmp_path / "out_train"
    layout = DatasetLayout(root)
    pairs, keypoints = load_train_pairs(root)
    fid = pairs["fidA"].iloc[0]
    layout.posemap_dir("train").mkdir()
    np.savez_compressed(layout.posemap("train", fid), np.zeros((8, 8, 18), np.uint8))
    row = keypoints.set_index("file_id").loc[fid]
    rendered = render_map(row["x"], row["y"], 256, 176)
    assert np.array_equal(
        PairImages(root, pairs, keypoints, (256, 176), False).pose_map("train", fid), rendered
    )
    with pytest.raises(DataError, match="has shape"):
        PairImages(root, pairs, keypoints, (256, 176)).pose_map("train", fid)
    layout.posemap("train", fid).unlink()
    sets = tiny_overrides(root, out, ["posemaps.export=false"])
    rows = run(load_config(REPO / "configs" / "demo.yaml", sets), only="train")
    assert rows.loc["train", "status"] == "ran", rows.attrs["echo"]
    assert (OutputLayout(out).train / "log.parquet").exists()


def test_input_listings_are_kept_once_by_digest_and_dropped_when_no_state_records_them(
    tmp_path,
):
    """A stage runs without its input folders' listings in memory (a million files'
    listing is hundreds of MB): they are written under their digest before it runs, and
    read back from there. A listing two stages record (the images) is made and written
    once; one no state records (a failed run's) is dropped; an interrupted write leaves
    nothing; listings kept the earlier way (one file per stage) are still read."""
    from pipeline.core.content_state import ContentCache
    from stages.dag import BY_NAME, take_fingerprint
    from stages.dag_state import legacy_listing_file, listing_dir, save_state, stored_listing

    root = tmp_path / "data"
    for rel in ("img/a/1.jpg", "img/b/2.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    write_image_list(["img/a/1.jpg"], root / "train_img_list.csv")
    write_image_list(["img/b/2.jpg"], root / "test_img_list.csv")
    cfg = load_config(None, [f"dataset.root={root}", f"output.root={tmp_path / 'out'}"])
    with ContentCache(tmp_path / "content.sqlite") as cache:
        fp = take_fingerprint(BY_NAME["keypoints"], cfg, cache)
        listings = {k: dict(folder.listing) for k, folder in fp.listings.items()}
        assert listings["dataset:img"] == {"a/1.jpg": ANY, "b/2.jpg": ANY}
        fp.stage_listings()
        digest = fp.inputs["dataset:img"]
        assert sorted(p.name for p in listing_dir(cfg).iterdir()) == [f"{digest}.json"]
        assert all("listing" not in folder.__dict__ for folder in fp.listings.values())
        save_state(cfg, "keypoints", fp, "run-1")
        assert stored_listing(cfg, "keypoints", "dataset:img", digest) == listings["dataset:img"]
    with ContentCache(tmp_path / "content.sqlite") as cache:
        other = take_fingerprint(BY_NAME["generate"], cfg, cache)
        assert other.inputs["dataset:img"] == digest
        other.stage_listings()  # already kept under its digest: not listed again
        assert "listing" not in other.listings["dataset:img"].__dict__
        (root / "img" / "b" / "3.jpg").write_bytes(b"3")
        cache.forget_trees()
        failed = take_fingerprint(BY_NAME["keypoints"], cfg, cache)
        failed.stage_listings()  # a run that fails after this records nothing
        assert len(list(listing_dir(cfg).iterdir())) == 2

        # A listing that fails while it is written (a folder gone unreadable, Ctrl-C
        # during a walk of a million files) leaves no file.
        class Interrupted:
            digest = "0" * 32

            @property
            def listing(self):
                raise KeyboardInterrupt

        failed.listings = {"dataset:img": Interrupted()}
        with pytest.raises(KeyboardInterrupt):
            failed.stage_listings()
        assert len(list(listing_dir(cfg).iterdir())) == 2
    save_state(cfg, "generate", other, "run-1")
    assert sorted(p.name for p in listing_dir(cfg).iterdir()) == [f"{digest}.json"]
    # Kept the earlier way: every listing of a stage in one file.
    (listing_dir(cfg) / f"{digest}.json").unlink()
    legacy_listing_file(cfg, "keypoints").write_text(json.dumps(listings))
    assert stored_listing(cfg, "keypoints", "dataset:img", digest) == listings["dataset:img"]
    legacy_listing_file(cfg, "keypoints").write_text('{"dataset:img": {"a/1.jpg"')  # cut short
    assert stored_listing(cfg, "keypoints", "dataset:img", digest) is None
