"""The demo's shipped checkpoint pair (weights/demo/ in the repository): a small NetG/NetD
trained on synthetic figures by scripts/train_demo_checkpoint.py, whose recipe.json records
the command, config, wall time and the files' sha256."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.weights import CHECKPOINT_RE, file_sha256

DEMO_DIR = Path(__file__).resolve().parents[2] / "weights" / "demo"
RECIPE = "recipe.json"


@dataclass(frozen=True)
class ShippedFile:
    path: Path
    sha256: str  # of the file as it is now
    recorded: str | None  # what recipe.json recorded (None: not recorded)

    @property
    def intact(self) -> bool:
        return self.sha256 == self.recorded


def recipe(directory: Path = DEMO_DIR) -> dict:
    path = directory / RECIPE
    return json.loads(path.read_text()) if path.is_file() else {}


def shipped_files(directory: Path = DEMO_DIR) -> list[ShippedFile]:
    """netG_<iter>.pth and netD_<iter>.pth of the shipped pair, checked against the recipe."""
    recorded = recipe(directory).get("files", {})
    return [
        ShippedFile(p, file_sha256(p), recorded.get(p.name))
        for p in sorted(directory.glob("net[GD]_*.pth"))
    ]


def demo_generator(directory: Path = DEMO_DIR) -> Path | None:
    """The shipped NetG, or None when this checkout has none (the demo then scores only the
    checkpoint it trains)."""
    found = [p for p in directory.glob("netG_*.pth") if CHECKPOINT_RE.match(p.name)]
    return found[0] if len(found) == 1 else None
