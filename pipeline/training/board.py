"""TensorBoard event files beside log.parquet, written by rank 0: each loss, the learning
rate and the seconds per iteration as scalars, the sample grids as images, so that
`tensorboard --logdir OUT/train` shows a run while it trains. A resumed run appends a new
event file to the same folder; TensorBoard merges them by step."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from pipeline.core import storage


class TrainBoard:
    """The event writer of rank 0. On object storage (no appends there) the events go to a
    local temporary folder, and each flush uploads its files whole under `logdir`."""

    def __init__(self, logdir, flush_secs: int = 30):
        from torch.utils.tensorboard import SummaryWriter

        self.logdir, self.staging = logdir, None
        if not storage.is_local(logdir):
            self.staging = tempfile.mkdtemp(prefix="posetransfer-events-")
        self.writer = SummaryWriter(self.staging or str(logdir), flush_secs=flush_secs)

    def _upload(self) -> None:
        if self.staging is not None:
            for name in os.listdir(self.staging):
                data = Path(self.staging, name).read_bytes()
                storage.write_bytes(storage.join(str(self.logdir), name), data)

    def step(self, it: int, losses: dict[str, float], lr: float, seconds: float) -> None:
        for name, value in losses.items():
            if not math.isnan(value):  # a term that is off (no VGG19: no perceptual loss)
                self.writer.add_scalar(f"loss/{name}", value, it)
        self.writer.add_scalar("train/learning_rate", lr, it)
        self.writer.add_scalar("train/seconds_per_iteration", seconds, it)

    def samples(self, it: int, grid_png) -> None:
        """The sample grid (condition | target | generated rows) as saved beside the log."""
        from PIL import Image

        with Image.open(storage.readable(grid_png)) as im:
            self.writer.add_image("samples", np.asarray(im.convert("RGB")), it, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()
        self._upload()

    def close(self) -> None:
        self.writer.close()
        self._upload()
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
