"""Where a run's files live inside a run directory.

A run directory can hold many runs: reusing `--out` starts a new run beside the earlier ones and
never replaces what they wrote. What runs share is keyed by run id inside it; what belongs to
one run lives under `runs/<run id>/`:

    DIR/ouroboros.db                      every run's rows, each carrying its run id
    DIR/experiments/                      git: one commit per experiment (ids unique in the DB)
    DIR/runs/<run id>/summary.json        the run's rounds, written as it goes
    DIR/runs/<run id>/shards/round-NNNN/  the run's Parquet shards (each row has its run id too)
    DIR/runs/<run id>/experiments.log     the run's experiment log
    DIR/latest -> runs/<run id>           the run that started last
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path


def new_run_id(name: str) -> str:
    """A run id unique across runs and hosts: the config's name, the start time, 6 random hex."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


class RunPaths:
    def __init__(self, root: str | Path, run_id: str) -> None:
        if not run_id or "/" in run_id or run_id in (".", ".."):
            raise ValueError(f"bad run id {run_id!r}")
        self.root = Path(root)
        self.run_id = run_id

    @property
    def db(self) -> Path:
        return self.root / "ouroboros.db"

    @property
    def experiments(self) -> Path:
        return self.root / "experiments"

    @property
    def run(self) -> Path:
        return self.root / "runs" / self.run_id

    @property
    def summary(self) -> Path:
        return self.run / "summary.json"

    @property
    def shards(self) -> Path:
        return self.run / "shards"

    @property
    def experiments_log(self) -> Path:
        return self.run / "experiments.log"

    @property
    def latest(self) -> Path:
        return self.root / "latest"

    def make(self) -> "RunPaths":
        """Create the run's directory and point `DIR/latest` at it (a convenience for people:
        replacing the link never touches an earlier run's files)."""
        self.run.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".latest-{self.run_id}"
        try:
            if tmp.is_symlink():
                tmp.unlink()
            tmp.symlink_to(Path("runs") / self.run_id)
            os.replace(tmp, self.latest)
        except OSError:  # a filesystem without symlinks: the run is complete without the link
            pass
        return self

