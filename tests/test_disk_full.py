"""A full disk is an input error: one paragraph naming the file, the space needed and the
space free, and no partial or temporary file left. Real failures only: ENOSPC from
/dev/full, torch's writer failing on /dev/full, and a small tmpfs (when this user may
mount one)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from test_train import tiny_config

from pipeline.core.atomic_io import disk_full_error, write_bytes_atomic, write_table
from pipeline.core.errors import DiskFullError
from pipeline.core.schemas import PAIRS_SCHEMA
from pipeline.training.checkpoints import save_state_dict
from stages.train import run_train

needs_dev_full = pytest.mark.skipif(
    not os.path.exists("/dev/full"), reason="no /dev/full on this system"
)


def enospc_from_dev_full() -> OSError:
    with open("/dev/full", "wb", buffering=0) as fh:
        with pytest.raises(OSError) as info:
            fh.write(b"x" * 1000)
    assert info.value.errno == errno.ENOSPC
    return info.value


def torch_failure_on_dev_full() -> RuntimeError:
    # torch's stream writer reports the failed write without an errno.
    with pytest.raises(RuntimeError) as info:
        torch.save({"w": torch.zeros(1000)}, "/dev/full")
    return info.value


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MB tmpfs mounted for the test: a filesystem that really fills up."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def all_files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@needs_dev_full
def test_an_enospc_names_the_path_the_space_needed_and_free(tmp_path):
    path = tmp_path / "out" / "tables" / "pairs.parquet"
    error = disk_full_error(enospc_from_dev_full(), path, needed=3_000_000)
    assert isinstance(error, DiskFullError)
    text = str(error)
    assert text.startswith(f"no space left on device writing {path} (about 3.0 MB needed, ")
    free = shutil.disk_usage(tmp_path).free / 1e6
    assert f"MB free on the filesystem of {path})" in text
    assert f"{free:.0f}" in text or f"{free:.1f}" in text
    assert "point output.root elsewhere. Nothing partial was kept." in text
    # Only a lack of space is turned into a DiskFullError.
    denied = OSError(errno.EACCES, os.strerror(errno.EACCES))
    assert disk_full_error(denied, path, needed=10) is None
    assert disk_full_error(ValueError("bad column"), path, needed=10**18) is None


@needs_dev_full
def test_a_torch_write_failure_is_a_full_disk_only_without_room(tmp_path):
    failure = torch_failure_on_dev_full()
    path = tmp_path / "checkpoints" / "netG_2.pth"
    more_than_free = shutil.disk_usage(tmp_path).free + 10**9
    error = disk_full_error(failure, path, needed=more_than_free)
    assert isinstance(error, DiskFullError) and str(path) in str(error)
    # Room enough: some other failure, kept as it is.
    assert disk_full_error(failure, path, needed=1000) is None
    assert disk_full_error(failure, path) is None


def test_writes_on_a_full_filesystem_raise_one_message_and_leave_nothing(small_fs):
    table = small_fs / "pairs.parquet"
    rows = 40_000  # random strings: about 3 MB, compressed or not
    rng = np.random.default_rng(0)
    names = [f"img/{v:032x}.jpg" for v in rng.integers(0, 2**62, rows)]
    frame = pd.DataFrame(
        {
            "imgA": names,
            "imgB": names[::-1],
            "fidA": names,
            "fidB": names[::-1],
            "group": names,
            "split": "train",
        }
    )
    with pytest.raises(DiskFullError, match=rf"writing {table} \(about \d+\.?\d* MB needed"):
        write_table(frame, table, PAIRS_SCHEMA)
    checkpoint = small_fs / "checkpoints" / "netG_2.pth"
    with pytest.raises(DiskFullError, match=rf"writing {checkpoint} \(about 2\.0 MB needed"):
        save_state_dict({"w": torch.zeros(500_000)}, checkpoint)
    meta = small_fs / "run_meta.json"
    write_bytes_atomic(meta, b"{}")
    with pytest.raises(DiskFullError, match="Nothing partial was kept"):
        write_bytes_atomic(meta, b" " * 2_000_000)
    assert meta.read_bytes() == b"{}"  # the old file stays whole
    assert all_files(small_fs) == ["run_meta.json"]


@pytest.mark.slow
def test_training_on_a_full_disk_stops_with_the_message(annotated_root, ray_session, small_fs):
    # netG_2.pth (about 1.5 MB at ngf 4) is the first file that does not fit in 1 MB.
    cfg = tiny_config(annotated_root, small_fs, quality_pairs=0)
    out = small_fs / "train"
    with pytest.raises(DiskFullError) as info:
        run_train(cfg, out=out)
    text = str(info.value)
    assert text.startswith(f"no space left on device writing {out / 'checkpoints'}/netG_2.pth")
    assert "Traceback" not in text and "iostream" not in text
    files = all_files(out)
    assert not [f for f in files if f.endswith(".tmp") or f.endswith(".pth")], files
    assert not [f for f in files if f.endswith("state.pt")], files
