"""What a stage reports to the DAG runner and the run manifest (StageResult), and running
a stage's entry point on Ray (a pure core plus a thin Ray wrapper)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.cluster.runtime import init_ray
from pipeline.core.config import Config

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    """What a stage reports to the DAG runner and the run manifest."""

    stage: str
    rows_in: int = 0
    rows_out: int = 0
    errors: int = 0
    skipped: int = 0
    outputs: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    ended: float | None = None

    def finish(self) -> StageResult:
        self.ended = time.time()
        return self

    def summary(self) -> str:
        secs = (self.ended or time.time()) - self.started
        text = (
            f"{self.stage}: {self.rows_in} in, {self.rows_out} out, {self.errors} errors, "
            f"{self.skipped} skipped ({secs:.1f}s)"
        )
        return "\n".join([text, *(f"  {n}" for n in self.notes)])


# A stage's entry point: the config plus stage options in, a StageResult out. The pure
# core lives beside it in the stage module as functions over tables and arrays.
StageFn = Callable[..., StageResult]


def run_stage(fn: StageFn, cfg: Config, **options: Any) -> StageResult:
    init_ray(cfg.ray)
    result = fn(cfg, **options)
    result.finish()
    log.info(result.summary())
    return result
