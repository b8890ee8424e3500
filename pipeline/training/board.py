"""TensorBoard event files beside log.parquet, written by rank 0: each loss, the learning
rate and the seconds per iteration as scalars, the sample grids as images, so that
`tensorboard --logdir OUT/train` shows a run while it trains. A resumed run appends a new
event file to the same folder; TensorBoard merges them by step."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np


class TrainBoard:
    def __init__(self, logdir: str | os.PathLike, flush_secs: int = 30):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(logdir), flush_secs=flush_secs)

    def step(self, it: int, losses: dict[str, float], lr: float, seconds: float) -> None:
        for name, value in losses.items():
            if not math.isnan(value):  # a term that is off (no VGG19: no perceptual loss)
                self.writer.add_scalar(f"loss/{name}", value, it)
        self.writer.add_scalar("train/learning_rate", lr, it)
        self.writer.add_scalar("train/seconds_per_iteration", seconds, it)

    def samples(self, it: int, grid_png: Path) -> None:
        """The sample grid (condition | target | generated rows) as saved beside the log."""
        from PIL import Image

        with Image.open(grid_png) as im:
            self.writer.add_image("samples", np.asarray(im.convert("RGB")), it, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
