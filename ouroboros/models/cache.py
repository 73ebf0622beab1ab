"""Where prepared models live: the user's cache directory, shared by every run."""
from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable


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


def prepare_once(name: str, out: Path, ready: Callable[[], bool], build: Callable[[Path], None],
                 force: bool = False) -> Path:
    """Build a model folder at most once across processes. `build` writes into a scratch folder
    that is renamed to `out` only when complete, so a killed build never looks finished."""
    if ready() and not force:
        return out
    with prepare_lock(name):
        if ready() and not force:  # another process finished it while we waited
            return out
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out
