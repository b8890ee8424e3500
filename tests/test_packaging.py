"""The package installs: a wheel built from a clean copy of the repository, installed into
a fresh virtual environment outside the checkout, imports every module and runs the
console command."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def clean_copy(dest: Path) -> Path:
    """The committed and new (not ignored) files only: no build/ or egg-info of the checkout."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout.split("\0")  # fmt: skip
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(src.read_bytes())
    return dest


@pytest.mark.slow
def test_wheel_installs_outside_the_checkout_and_every_module_imports(tmp_path):
    source = clean_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(dist), str(source)],
        check=True, cwd=tmp_path,
    )  # fmt: skip
    assert not (REPO / "build").exists()
    (wheel,) = dist.glob("posetransfer_pipeline-*.whl")
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    python = env / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    # The dependencies come from this environment's site-packages, added after the new
    # one's (a path line in a .pth runs no .pth of that folder, so the project's editable
    # install is not seen).
    (site / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True, cwd=tmp_path,
    )  # fmt: skip
    modules = sorted(
        ".".join(p.relative_to(source).with_suffix("").parts).removesuffix(".__init__")
        for pkg in ("cli", "pipeline", "stages")
        for p in (source / pkg).rglob("*.py")
    )
    script = (
        "import importlib, pathlib, sys\n"
        f"site = pathlib.Path({str(site)!r})\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        "    assert site in pathlib.Path(module.__file__).parents, (name, module.__file__)\n"
        "print('imported', len(sys.modules))\n"
    )
    res = subprocess.run([python, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run(
        [env / "bin" / "posetransfer", "--help"], cwd=tmp_path, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "keypoints -> posemaps -> pairs" in res.stdout and "generate" in res.stdout
