"""One run at a time per output root: an exclusive lock on OUT/_state/run.lock, with the
holder (run, host, pid, start time) written inside so that a second run can say whom it
waits for. The kernel drops the lock when its process dies, so a lock left by a killed run
is taken over without asking anyone to delete a file."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.core import storage
from pipeline.core.errors import PipelineError
from pipeline.core.layout import OutputLayout


class OutputLockedError(PipelineError):
    """Another live process holds the output root."""


def describe_holder(holder: dict) -> str:
    return (
        f"{holder.get('command', 'a run')} (pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')}, started {holder.get('started', '?')})"
    )


def _read_holder(fh) -> dict:
    fh.seek(0)
    text = fh.read()
    try:
        return json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {}


@contextlib.contextmanager
def output_lock(
    root: str | os.PathLike,
    command: str,
    wait: bool = False,
    echo: Callable[[str], None] = print,
) -> Iterator[Path]:
    """Hold the output root for the length of the block. Without `wait` a held root raises
    OutputLockedError naming the holder; with it, waits (saying for whom)."""
    path = OutputLayout(root).lock
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(_read_holder(fh))
            if not wait:
                raise OutputLockedError(
                    f"the output root {storage.absolute(root)} is in use by {holder}. Two runs "
                    "on one output root would do the same work twice; wait for it to finish, "
                    "pass --wait to start when it has, or choose another output.root."
                ) from None
            echo(f"waiting for {holder} to release {storage.absolute(root)} ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        else:
            left = _read_holder(fh)
            if left:
                echo(f"taking over the lock left by {describe_holder(left)}: that run is gone")
        fh.seek(0)
        fh.truncate()
        fh.write(
            json.dumps(
                {
                    "command": command,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                }
            )
        )
        fh.flush()
        try:
            yield path
        finally:
            fh.seek(0)
            fh.truncate()
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)
