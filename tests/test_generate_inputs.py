"""Generate stage, issue 20: images of another size than the network's input, a run whose
every job fails, an interrupted Ray run, the default mode's JPEG quality, a checkpoint
rewritten in place, and the fingerprint's config keys."""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from test_generate import NGF, make_cfg
from test_generate_modes import generated_count
from test_pipeline_run import random_checkpoint

from pipeline.core.atomic_io import read_table
from pipeline.core.content_state import ContentCache
from pipeline.core.errors import DataError
from pipeline.core.imaging import load_rgb
from pipeline.core.layout import DatasetLayout
from pipeline.core.schemas import MANIFEST_SCHEMA
from pipeline.core.weights import load_into
from pipeline.generator.generation_plan import MANIFEST, manifest_output, read_test_pairs
from pipeline.generator.networks import NetG, build_generator
from pipeline.pose.posemap import load_posemap, write_posemap
from stages.generate import run_generate

PAIRS = 4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("ckpt20") / "netG_400.pth", NGF)


def pil_jpeg_95(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def direct_fake(net: NetG, image: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """NetG's image for one job, mapped as the default save mode says: (x+1)/2, rounded."""
    x = torch.from_numpy(np.float32(image)).permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        y = net(x, torch.from_numpy(np.float32(maps)).permute(2, 0, 1)[None])[0]
    return ((y + 1) / 2).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()


def first_pair_image(root: Path) -> tuple[str, str]:
    pair = read_test_pairs(root).iloc[0]
    return pair.imgA, pair.fidA


def test_an_odd_sized_first_image_is_fitted_to_the_network_input(
    annotated_root, ckpt, tmp_path, ray_session
):
    root = tmp_path / "data"
    shutil.copytree(annotated_root, root)
    rel, fid = first_pair_image(root)
    layout = DatasetLayout(root)
    small = load_rgb(root / rel)
    # The same person at twice the size, with its map at twice the size.
    big = small.resize((352, 512), Image.NEAREST)
    big.save(root / rel, format="JPEG", quality=95)
    small_map = load_posemap(layout.posemap("test", fid))
    k, y, x = np.nonzero(small_map.transpose(2, 0, 1))
    xs, ys = np.full(18, -1), np.full(18, -1)
    xs[k], ys[k] = 2 * x, 2 * y
    write_posemap(layout.posemap("test", fid), xs, ys, 512, 352)

    cfg = make_cfg(root, tmp_path)
    result = run_generate(cfg, checkpoints=[str(ckpt)], limit=PAIRS)
    out = tmp_path / "generated"
    manifest = read_table(out / MANIFEST, MANIFEST_SCHEMA)
    assert result.errors == 0 and (manifest["status"] == "ok").all(), manifest["error"].tolist()
    assert len(manifest) == 2 * PAIRS

    # The published API's way: height 256, here exactly 176 wide, so no crop or pad.
    fitted = np.asarray(load_rgb(root / rel).resize((176, 256), Image.BICUBIC))
    net = load_into(NetG(ngf=NGF), ckpt).eval()
    involved = manifest[manifest["source_id"] == fid]
    assert len(involved)
    for r in involved.itertuples():
        maps = np.concatenate([small_map, load_posemap(layout.posemap("test", r.target_id))], 2)
        expected = pil_jpeg_95(direct_fake(net, fitted, maps))
        assert (out / r.output_path).read_bytes() == expected, r.output_path
    for r in manifest[manifest["target_id"] == fid].itertuples():
        assert (out / r.real_path).read_bytes() == pil_jpeg_95(fitted), r.real_path
        assert Image.open(out / r.output_path).size == (176, 256)


def test_a_square_first_image_is_cropped_not_fatal(annotated_root, ckpt, tmp_path, ray_session):
    root = tmp_path / "data"
    shutil.copytree(annotated_root, root)
    rel, fid = first_pair_image(root)
    layout = DatasetLayout(root)
    square = Image.new("RGB", (300, 300), (255, 255, 255))
    square.paste(load_rgb(root / rel), (62, 22))
    square.save(root / rel, format="JPEG", quality=95)
    small_map = load_posemap(layout.posemap("test", fid))
    k, y, x = np.nonzero(small_map.transpose(2, 0, 1))
    xs, ys = np.full(18, -1), np.full(18, -1)
    xs[k], ys[k] = x + 62, y + 22
    write_posemap(layout.posemap("test", fid), xs, ys, 300, 300)

    result = run_generate(make_cfg(root, tmp_path), checkpoints=[str(ckpt)], limit=PAIRS)
    manifest = read_table(tmp_path / "generated" / MANIFEST, MANIFEST_SCHEMA)
    assert result.errors == 0 and (manifest["status"] == "ok").all(), manifest["error"].tolist()
    for r in manifest[(manifest["source_id"] == fid) | (manifest["target_id"] == fid)].itertuples():
        for path in (r.output_path, r.real_path):
            assert Image.open(tmp_path / "generated" / path).size == (176, 256)


def test_a_run_whose_every_job_fails_is_an_error_after_its_manifest(
    annotated_root, ckpt, tmp_path, ray_session
):
    from cli.main import cli

    root = tmp_path / "data"
    # No pose maps and no keypoints table to render them from: every job lacks its maps.
    shutil.copytree(
        annotated_root, root, ignore=shutil.ignore_patterns("*_pose_maps", "keypoints.parquet")
    )
    cfg = make_cfg(root, tmp_path)
    with pytest.raises(DataError, match=rf"all {2 * PAIRS} generation job\(s\) failed.*pose map"):
        run_generate(cfg, checkpoints=[str(ckpt)], limit=PAIRS)
    manifest = read_table(tmp_path / "generated" / MANIFEST, MANIFEST_SCHEMA)
    assert len(manifest) == 2 * PAIRS and (manifest["status"] == "error").all()

    args = ["--set", f"dataset.root={root}", "--set", f"output.root={tmp_path / 'cli'}"]
    args += ["generate", "--checkpoint", str(ckpt), "--ngf", str(NGF), "--limit", str(PAIRS)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    assert "generation job(s) failed" in res.output and "Traceback" not in res.output


def test_an_interrupted_ray_run_keeps_every_batch_it_finished(
    annotated_root, ckpt, tmp_path, ray_session, monkeypatch
):
    import stages.generate as generate_stage
    from pipeline.cluster.batch_stream import stream_ray

    cfg = make_cfg(annotated_root, tmp_path)
    cfg.generate.executor, cfg.generate.batch_size = "ray", 2
    out = tmp_path / "generated"
    received = []

    def interrupted_after_the_first_batch(*args, **kwargs):
        parts = stream_ray(*args, **kwargs)
        try:
            received.append(next(parts))
            yield received[0]
            # Ray finishes batches ahead of what reaches this process. Ctrl-C once one that
            # never reached it is on disk: once its rows are recorded, or after a minute.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if len(manifest_output(out).done()) > len(received[0]):
                    break
                time.sleep(0.2)
            raise KeyboardInterrupt
        finally:
            parts.close()

    monkeypatch.setattr(generate_stage, "stream_ray", interrupted_after_the_first_batch)
    # Without deduplication every job is one image of one batch.
    with pytest.raises(KeyboardInterrupt):
        run_generate(cfg, checkpoints=[str(ckpt)], limit=PAIRS, dedup=False)
    monkeypatch.undo()

    again = run_generate(cfg, checkpoints=[str(ckpt)], limit=PAIRS, dedup=False)
    assert again.skipped > len(received[0]), "finished batches the driver never saw were lost"
    assert again.rows_out == generated_count(again) == 2 * PAIRS - again.skipped
    manifest = read_table(out / MANIFEST, MANIFEST_SCHEMA)
    assert len(manifest) == 2 * PAIRS and (manifest["status"] == "ok").all()

    cfg.output.root, cfg.generate.executor = str(tmp_path / "clean"), "in_process"
    run_generate(cfg, checkpoints=[str(ckpt)], limit=PAIRS)
    clean = tmp_path / "clean" / "generated"
    files = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*.jpg")}
    expected = {str(p.relative_to(clean)): p.read_bytes() for p in clean.rglob("*.jpg")}
    assert files == expected


def test_default_mode_saves_at_jpeg_quality_95(annotated_root, ckpt, tmp_path, ray_session):
    run_generate(make_cfg(annotated_root, tmp_path), checkpoints=[str(ckpt)], limit=2)
    out = tmp_path / "generated"
    manifest = read_table(out / MANIFEST, MANIFEST_SCHEMA)
    layout, pairs = DatasetLayout(annotated_root), read_test_pairs(annotated_root)
    net = load_into(NetG(ngf=NGF), ckpt).eval()
    for r in manifest.itertuples():
        pair = pairs.iloc[r.index]
        source, target = (pair.imgA, pair.imgB) if r.direction == "AB" else (pair.imgB, pair.imgA)
        maps = np.concatenate(
            [load_posemap(layout.posemap("test", f)) for f in (r.source_id, r.target_id)], 2
        )
        fake = direct_fake(net, np.asarray(load_rgb(annotated_root / source)), maps)
        assert (out / r.output_path).read_bytes() == pil_jpeg_95(fake), r.output_path
        real = np.asarray(load_rgb(annotated_root / target))
        assert (out / r.real_path).read_bytes() == pil_jpeg_95(real), r.real_path


def test_a_checkpoint_rewritten_in_place_regenerates_every_image(
    annotated_root, tmp_path, ray_session
):
    states = []
    for seed in (11, 12):
        torch.manual_seed(seed)
        buf = io.BytesIO()
        torch.save(build_generator(NGF, init=False).state_dict(), buf)
        states.append(buf.getvalue())
    assert len(states[0]) == len(states[1]) and states[0] != states[1]
    path = tmp_path / "netG_500.pth"
    path.write_bytes(states[0])
    cfg = make_cfg(annotated_root, tmp_path)
    cfg.generate.checkpoints = [str(path)]
    run_generate(cfg, limit=PAIRS)
    out = tmp_path / "generated"
    manifest = read_table(out / MANIFEST, MANIFEST_SCHEMA)
    before = {p: (out / p).read_bytes() for p in manifest["output_path"]}

    inode, mtime = path.stat().st_ino, path.stat().st_mtime_ns
    with open(path, "r+b") as fh:  # in place: the same inode, the same size
        fh.write(states[1])
    os.utime(path, ns=(mtime + 1_000_000_000, mtime + 1_000_000_000))
    assert (path.stat().st_ino, path.stat().st_size) == (inode, len(states[0]))

    again = run_generate(cfg, limit=PAIRS)
    assert again.skipped == 0 and again.rows_out == 2 * PAIRS and again.errors == 0
    assert all((out / p).read_bytes() != data for p, data in before.items())


def test_channels_last_is_part_of_the_generate_fingerprint(tmp_path):
    from stages.dag import take_fingerprint
    from stages.generate import STAGE

    prints = []
    with ContentCache(tmp_path / "content.sqlite") as cache:
        for channels_last in (True, False):
            cfg = make_cfg(tmp_path / "data", tmp_path)
            cfg.generate.channels_last = channels_last
            prints.append(take_fingerprint(STAGE, cfg, cache).digest())
    assert prints[0] != prints[1]


def test_pose_maps_of_another_size_move_with_their_image():
    from pipeline.pose.posemap import fit_map, gaussian_map, one_hot_map

    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 176, 18), rng.integers(0, 256, 18)
    x[4] = y[4] = -1
    # Twice the size: every mark lands back where the small image has it.
    assert np.array_equal(fit_map(one_hot_map(2 * x, 2 * y, 512, 352), (256, 176)),
                          one_hot_map(x, y, 256, 176))  # fmt: skip
    wide = gaussian_map(2 * x, 2 * y, 512, 352, sigma=8.0)
    fitted = fit_map(wide, (256, 176))
    assert fitted.shape == (256, 176, 18) and fitted.dtype == np.float32
    peaks = [np.unravel_index(np.argmax(fitted[..., k]), (256, 176)) for k in range(18)]
    for k in np.nonzero(x >= 0)[0]:
        assert abs(int(peaks[k][0]) - y[k]) <= 1 and abs(int(peaks[k][1]) - x[k]) <= 1
    assert fitted[..., 4].max() == 0
    # A square image is cropped at the sides: marks there are missing, the rest move.
    square = one_hot_map(np.array([10, 150] + [-1] * 16), np.array([100, 100] + [-1] * 16),
                         300, 300)  # fmt: skip
    k, rows, cols = np.nonzero(fit_map(square, (256, 176)).transpose(2, 0, 1))
    assert k.tolist() == [1] and (rows[0], cols[0]) == (85, round(150 * 256 / 300) - 40)
