"""Checkpoints: atomic writes and the random-number state needed to resume a run exactly.

A checkpoint is a dict saved with torch.save. It is written to a temporary file in the same folder,
flushed to disk, then renamed over the target, so a reader never sees half a file and a crash mid-write
leaves the previous checkpoint intact.
"""

import os
import random
import signal
import threading
from pathlib import Path

import numpy as np
import torch


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write `state` to `path` atomically (temporary file, fsync, os.replace)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        torch.save(state, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint written by `save_checkpoint` onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    # weights_only=False: the file also stores numpy RNG state and plain config dicts written by us.
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state() -> dict:
    """Python, numpy (global) and torch random states, CUDA included when present."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of `rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from one integer."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class StopRequest:
    """Turn Ctrl-C (SIGINT) into a flag that a training loop checks between steps.

    The loop then saves its checkpoint at a step boundary, so the file never holds a half-applied
    update. A second Ctrl-C raises KeyboardInterrupt at once. Outside the main thread, where signal
    handlers cannot be installed, Ctrl-C keeps its default behaviour.
    """

    def __enter__(self) -> "StopRequest":
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
