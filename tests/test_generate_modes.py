"""Generate stage, issue 15: the published save mode equals the published test script's
images byte for byte; identical jobs (A->B of (a, b), B->A of (b, a)) run once and resume;
gaussian pose maps generate without any setting."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from test_generate import NGF, make_cfg

from pipeline.core.atomic_io import read_table
from pipeline.core.errors import DataError
from pipeline.core.layout import DatasetLayout
from pipeline.core.schemas import MANIFEST_SCHEMA
from pipeline.core.weights import load_into
from pipeline.generator.generation_plan import (
    MANIFEST,
    generation_jobs,
    identical_jobs,
    read_test_pairs,
)
from pipeline.generator.networks import NetG, build_generator
from pipeline.generator.save_modes import GENERATION_META
from stages.generate import run_generate
from stages.posemaps import load_posemap, run_posemaps

SYMMETRIC = 12  # the first 12 test pairs: every ordered pair of one identity's 4 images


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt15") / "netG_300.pth"
    torch.manual_seed(5)
    torch.save(build_generator(NGF, init=False).state_dict(), path)
    return path


def generated_count(result) -> int:
    return int(re.search(r"(\d+) image\(s\) generated", "\n".join(result.notes)).group(1))


def published_script_jpeg(image: torch.Tensor) -> bytes:
    """The published test script's save, from its definition: make_grid(normalize=True),
    ToPILImage, PIL save with default settings."""
    import torchvision

    grid = torchvision.utils.make_grid(image, nrow=1, padding=0, normalize=True)
    buf = io.BytesIO()
    torchvision.transforms.ToPILImage()(grid).save(buf, format="JPEG")
    return buf.getvalue()


def published_loader_tensor(path: Path) -> torch.Tensor:
    """An image as the published data loader made it: ToTensor, Normalize(0.5, 0.5)."""
    import torchvision.transforms as T

    return T.Normalize([0.5] * 3, [0.5] * 3)(T.ToTensor()(Image.open(path).convert("RGB")))


def mean_ssim(root: Path, manifest: pd.DataFrame) -> float:
    from pipeline.metrics.ssim import ssim_image

    return float(
        np.mean(
            [
                ssim_image(np.asarray(Image.open(root / r)), np.asarray(Image.open(root / f)))
                for r, f in zip(manifest["real_path"], manifest["output_path"], strict=True)
            ]
        )
    )


def test_identical_jobs_run_once_from_the_first_pending_or_a_done_one():
    pairs = pd.DataFrame(
        {
            "imgA": ["a", "a", "b"],
            "imgB": ["b", "c", "a"],
            "fidA": ["a", "a", "b"],
            "fidB": ["b", "c", "a"],
        }
    )
    jobs = generation_jobs(pairs).assign(checkpoint="1", checkpoint_path="p")
    empty = MANIFEST_SCHEMA.empty_table().to_pandas()
    run, links = identical_jobs(jobs, empty)
    # (a,b): AB 0 and BA 2; (b,a): AB 2 and BA 0; (a,c): AB 1 only; (c,a): BA 1 only.
    assert sorted(zip(run["direction"], run["index"], strict=True)) == [
        ("AB", 0),
        ("AB", 1),
        ("AB", 2),
        ("BA", 1),
    ]
    got = {
        (r.direction, r.index): (r.from_direction, r.from_index, r.from_output, r.from_real)
        for r in links.itertuples()
    }
    assert got == {
        ("BA", 0): ("AB", 2, "fake_images/iter_1/fake_B/2@a.jpg", "real_images/real_B/2@a.jpg"),
        ("BA", 2): ("AB", 0, "fake_images/iter_1/fake_B/0@b.jpg", "real_images/real_B/0@b.jpg"),
    }
    # A job already made (here B->A 2) is the source; nothing of its key runs again.
    done = pd.DataFrame(
        [
            (
                "1",
                "BA",
                2,
                "a",
                "b",
                "real_images/real_A/2@b.jpg",
                "fake_images/iter_1/fake_A/2@b.jpg",
                "ok",
                None,
                None,
                None,
            )
        ],
        columns=MANIFEST_SCHEMA.names,
    )
    pending = jobs[~((jobs["direction"] == "BA") & (jobs["index"] == 2))]
    run, links = identical_jobs(pending, done)
    assert ("AB", 0) not in set(zip(run["direction"], run["index"], strict=True))
    row = links.set_index(["direction", "index"]).loc[("AB", 0)]
    assert (row["from_direction"], row["from_index"], row["from_output"]) == (
        "BA",
        2,
        "fake_images/iter_1/fake_A/2@b.jpg",
    )


def test_published_mode_equals_the_published_script_byte_for_byte(
    annotated_root, ckpt, tmp_path, ray_session
):
    cfg = make_cfg(annotated_root, tmp_path)
    # NetG's last bits depend on the batch it runs in (oneDNN kernels), and truncation turns
    # them into grey levels: both sides run batches of one.
    cfg.generate.minmax, cfg.generate.dtype, cfg.generate.batch_size = True, "fp32", 1
    result = run_generate(cfg, checkpoints=[str(ckpt)], limit=4)
    out = tmp_path / "generated"
    manifest = read_table(out / MANIFEST, MANIFEST_SCHEMA)
    assert result.errors == 0 and len(manifest) == 8 and (manifest["status"] == "ok").all()
    assert json.loads((out / GENERATION_META).read_text())["checkpoints"] == {"300": "published"}

    net = load_into(NetG(ngf=NGF), ckpt).eval()
    layout, pairs = DatasetLayout(annotated_root), read_test_pairs(annotated_root)
    reference = tmp_path / "published"
    for r in manifest.itertuples():
        pair = pairs.iloc[r.index]
        source, target = (pair.imgA, pair.imgB) if r.direction == "AB" else (pair.imgB, pair.imgA)
        maps = np.concatenate(
            [load_posemap(layout.posemap("test", f)) for f in (r.source_id, r.target_id)], 2
        )
        with torch.no_grad():
            fake = net(
                published_loader_tensor(annotated_root / source)[None],
                torch.from_numpy(np.float32(maps)).permute(2, 0, 1)[None],
            )[0]
        for rel, image in (
            (r.output_path, fake),
            (r.real_path, published_loader_tensor(annotated_root / target)),
        ):
            (reference / rel).parent.mkdir(parents=True, exist_ok=True)
            (reference / rel).write_bytes(published_script_jpeg(image))
            assert (out / rel).read_bytes() == (reference / rel).read_bytes(), rel
    assert abs(mean_ssim(out, manifest) - mean_ssim(reference, manifest)) <= 1e-9


def test_one_output_directory_holds_one_save_mode(annotated_root, ckpt, tmp_path, ray_session):
    cfg = make_cfg(annotated_root, tmp_path)
    run_generate(cfg, checkpoints=[str(ckpt)], limit=1)
    cfg.generate.minmax = True
    with pytest.raises(DataError, match="default mode.*--no-minmax"):
        run_generate(cfg, checkpoints=[str(ckpt)], limit=1)


def test_symmetric_pairs_generate_each_distinct_job_once_and_resume(
    annotated_root, ckpt, tmp_path, ray_session
):
    cfg = make_cfg(annotated_root, tmp_path)
    result = run_generate(cfg, checkpoints=[str(ckpt)], limit=SYMMETRIC)
    out = tmp_path / "generated"
    manifest = read_table(out / MANIFEST, MANIFEST_SCHEMA)
    assert result.rows_out == len(manifest) == 2 * SYMMETRIC and (manifest["status"] == "ok").all()
    assert generated_count(result) == SYMMETRIC  # every key twice: half the forwards
    files = {p: p.read_bytes() for p in out.rglob("*.jpg")}
    assert len(files) == 4 * SYMMETRIC  # fake and real, both directions
    ab = manifest[manifest["direction"] == "AB"].set_index(["source_id", "target_id"])
    ba = manifest[manifest["direction"] == "BA"].set_index(["source_id", "target_id"])
    assert set(ab.index) == set(ba.index)
    for key in ab.index:
        for column in ("output_path", "real_path"):
            a, b = out / ab.loc[key, column], out / ba.loc[key, column]
            assert (
                a != b and a.read_bytes() == b.read_bytes() and a.stat().st_ino == b.stat().st_ino
            )

    # Lose one direction's image of key 0, both of key 1, the real image of key 2's A->B.
    keys = list(ab.index)
    lost = [
        out / ba.loc[keys[0], "output_path"],
        out / ab.loc[keys[1], "output_path"],
        out / ba.loc[keys[1], "output_path"],
        out / ab.loc[keys[2], "real_path"],
    ]
    for path in lost:
        path.unlink()
    again = run_generate(cfg, checkpoints=[str(ckpt)], limit=SYMMETRIC)
    assert (
        generated_count(again) == 1 and again.rows_out == 4 and again.skipped == 2 * SYMMETRIC - 4
    )
    assert {p: p.read_bytes() for p in out.rglob("*.jpg")} == files
    # The same rows; `node` says where each image was made, which a rerun may change.
    again_rows = read_table(out / MANIFEST, MANIFEST_SCHEMA)
    assert again_rows.drop(columns="node").equals(manifest.drop(columns="node"))


def test_gaussian_pose_maps_generate_without_any_setting(
    annotated_root, ckpt, tmp_path, ray_session
):
    root = tmp_path / "data"
    shutil.copytree(annotated_root, root, ignore=shutil.ignore_patterns("*_pose_maps"))
    cfg = make_cfg(root, tmp_path)
    run_posemaps(cfg, sigma=4.0, progress=False)
    assert json.loads((DatasetLayout(root).posemap_dir("test") / "pose_maps.json").read_text()) == {
        "kind": "gaussian",
        "sigma": 4.0,
    }
    result = run_generate(cfg, checkpoints=[str(ckpt)], limit=2)
    manifest = read_table(tmp_path / "generated" / MANIFEST, MANIFEST_SCHEMA)
    assert result.errors == 0 and (manifest["status"] == "ok").all() and len(manifest) == 4
    assert any("gaussian sigma 4.0, sent to the model as dense maps" in n for n in result.notes)
    # Back to one-hot maps without --force: the change of kind rewrites every map.
    run_posemaps(cfg, progress=False)
    pair = read_test_pairs(root).iloc[0]
    assert load_posemap(DatasetLayout(root).posemap("test", pair.fidA)).dtype == np.uint8
