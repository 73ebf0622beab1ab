"""Where prepared models live: the user's cache directory, shared by every run."""
from __future__ import annotations

import os
from pathlib import Path


def model_cache_dir() -> Path:
    root = os.environ.get("OUROBOROS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ouroboros"
    )
    path = Path(root) / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
