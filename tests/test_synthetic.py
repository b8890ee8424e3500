import hashlib

import numpy as np
from PIL import Image

from pipeline.core.legacy_csv import read_image_list, read_keypoints_csv
from pipeline.synthetic.tree import GROUND_TRUTH_CSV, write_synthetic_tree


def digest_tree(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path):
    a = write_synthetic_tree(tmp_path / "a", identities=3, poses_per_identity=3, seed=11)
    write_synthetic_tree(tmp_path / "b", identities=3, poses_per_identity=3, seed=11)
    write_synthetic_tree(tmp_path / "c", identities=3, poses_per_identity=3, seed=12)
    assert digest_tree(tmp_path / "a") == digest_tree(tmp_path / "b")
    assert digest_tree(tmp_path / "a") != digest_tree(tmp_path / "c")
    assert len(a) == 9


def test_tree_layout_and_split_by_identity(synth_root):
    train = read_image_list(synth_root / "train_img_list.csv", synth_root)
    test = read_image_list(synth_root / "test_img_list.csv", synth_root)
    assert len(train) + len(test) == 32 and test
    ids = lambda paths: {p.rsplit("/", 1)[0] for p in paths}  # noqa: E731
    assert not ids(train) & ids(test)
    for p in train + test:
        parts = p.split("/")
        assert parts[0] == "img" and parts[1] in ("MEN", "WOMEN") and parts[3].startswith("id_")
        assert Image.open(synth_root / p).size == (176, 256)


def test_keypoints_inside_image_and_on_the_figure(synth_root):
    gt = read_keypoints_csv(synth_root / GROUND_TRUTH_CSV)
    paths = {
        p.replace("/", "").rsplit(".", 1)[0]: p
        for p in read_image_list(synth_root / "train_img_list.csv", synth_root)
        + read_image_list(synth_root / "test_img_list.csv", synth_root)
    }
    assert len(gt) == len(paths)
    n_checked = 0
    for row in gt.itertuples():
        im = np.asarray(Image.open(synth_root / paths[row.file_id]).convert("RGB")).astype(int)
        x, y = np.asarray(row.x), np.asarray(row.y)
        ok = x >= 0
        assert ok.sum() >= 14
        assert (x[ok] < 176).all() and (y[ok] < 256).all() and (y[ok] >= 0).all()
        for k in np.nonzero(ok)[0]:
            assert im[y[k], x[k]].min() < 235, (row.file_id, k)  # painted, not background
            n_checked += 1
    assert n_checked > 32 * 14
    # Distinct poses within an identity.
    first = gt.iloc[:4]
    assert len({tuple(np.asarray(v)) for v in first.x}) == 4
