"""Where prepared models live: the user's cache directory, shared by every run."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path


def model_cache_dir() -> Path:
    root = os.environ.get("OUROBOROS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ouroboros"
    )
    path = Path(root) / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def prepare_lock(name: str):
    """Serialise preparation of one model across processes: the generator and learner actors
    (and parallel test workers) may all ask for it at once on a fresh machine."""
    path = model_cache_dir() / f".{name}.lock"
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
