"""The errors a user can act on. Everything the pipeline raises on purpose is a
PipelineError; the CLI prints its message (no traceback) and exits with code 2. Anything
else is a bug and keeps its traceback."""

from __future__ import annotations


class PipelineError(Exception):
    """A failure of the input, not of the code: the message says what, where and what to do."""


class ConfigError(PipelineError, ValueError):
    """The config is invalid; the message names the field and the bad value."""


class DataError(PipelineError, ValueError):
    """Input data (a CSV, a table, a path, a directory) is not what the contract says."""


class ImageError(DataError):
    """An input file is not a usable image; the message says why."""


class WeightsError(PipelineError, RuntimeError):
    """A weight file is missing, unsafe or does not fit the network."""


class UnreadableTableError(DataError):
    """A table on disk is damaged (truncated, not Parquet); the message names the file."""


class DiskFullError(DataError):
    """A write ran out of space (or quota); the message names the file, the space needed
    and the space free, and says nothing partial was kept."""


class StalledError(PipelineError, RuntimeError):
    """No batch of a stage finished within `ray.stall_timeout_s`; the message says what
    Ray waits for. Finished rows are kept for the rerun."""
