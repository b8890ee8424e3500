"""`weights status` with an empty cache and with a weights dir holding one right-named file."""

import hashlib

from click.testing import CliRunner

from cli.main import cli
from pipeline.core.weights import KNOWN_WEIGHTS


def test_status_with_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    res = CliRunner().invoke(cli, ["--set", f"output.root={tmp_path}", "weights", "status"])
    assert res.exit_code == 1
    for spec in KNOWN_WEIGHTS.values():
        assert f"MISSING  {spec.name}" in res.output and spec.filename in res.output
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in res.output
    # Only BlazePose's files, which ship inside the mediapipe wheel, and the demo pair
    # shipped in the repository.
    assert "4 present" in res.output and "present  blazepose_landmark_full" in res.output
    assert "present  demo netG_" in res.output and "present  demo netD_" in res.output


def test_status_finds_a_right_named_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    wdir = tmp_path / "weights"
    wdir.mkdir()
    data = b"not really inception weights"
    (wdir / KNOWN_WEIGHTS["fid_inception"].filename).write_bytes(data)
    (wdir / "fid.pth").write_bytes(data)  # a wrong name is not picked up
    ckpts = tmp_path / "train" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "netG_500.pth").write_bytes(b"ckpt")
    res = CliRunner().invoke(
        cli,
        ["--set", f"weights.dir={wdir}", "--set", f"output.root={tmp_path}", "weights", "status"],
    )
    assert res.exit_code == 1  # others still missing
    assert "present  fid_inception" in res.output
    assert hashlib.sha256(data).hexdigest() in res.output
    assert "present  netG 500" in res.output and hashlib.sha256(b"ckpt").hexdigest() in res.output
    assert "6 present" in res.output  # with the two BlazePose files and the demo pair


def test_fetch_rejects_unknown_names():
    res = CliRunner().invoke(cli, ["weights", "fetch", "nope"])
    assert res.exit_code != 0 and "unknown weight 'nope'" in res.output
