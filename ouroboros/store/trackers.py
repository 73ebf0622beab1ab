"""Each round's metrics to the trackers people already read: TensorBoard event files and Weights &
Biases. The recorder (the run's one writer, on the driver's node) logs a round when it finishes,
with the round as the step, so curves line up with `summary.json`.

TensorBoard writes under `runs/<run id>/tensorboard/`; W&B keeps its files under
`runs/<run id>/wandb/`, offline by default (nothing leaves the machine until `wandb sync`), or
online with the API key read from the variable `tracking.wandb.api_key_env` names: handed to
the SDK in memory, never written to a file, the config or a log.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path


class TrackerError(RuntimeError):
    """A tracker the config asks for cannot run here; the message says what to do."""


def scalars(row: dict, prefix: str = "") -> dict[str, float]:
    """The round's numbers as flat `a/b` names: nested sections (learner, broadcast, seconds)
    become prefixes; a 95% interval becomes `_lo` and `_hi`; texts, lists and non-finite
    values are left out (a tracker plots numbers)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)):
            if math.isfinite(value):
                out[name] = float(value)
        elif isinstance(value, dict):
            out.update(scalars(value, f"{name}/"))
        elif isinstance(value, (list, tuple)) and key.endswith("_ci95") and len(value) == 2 \
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value):
            out[f"{name}_lo"], out[f"{name}_hi"] = float(value[0]), float(value[1])
    return out


def check(settings: dict) -> None:
    """Before a run starts: what the config asks for is installed and its key is set (one clear
    line each, rather than a recorder that dies at start-up)."""
    if settings.get("tensorboard"):
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise TrackerError("tracking.tensorboard is on but the tensorboard package is missing: "
                               "`make venv` installs it (requirements.txt)") from None
    w = settings.get("wandb") or {}
    if w.get("enabled"):
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise TrackerError("tracking.wandb is on but the wandb package is missing: `make venv` installs it "
                               "(requirements.txt)") from None
        if w.get("mode") == "online" and not os.environ.get(w.get("api_key_env") or ""):
            raise TrackerError(f"tracking.wandb.mode is online but ${w.get('api_key_env')} is not set: export your "
                               f"W&B API key under that name, or use mode: offline and `wandb sync` later")


class Trackers:
    def __init__(self, settings: dict, run_path: str | Path, run_id: str, config: dict) -> None:
        check(settings)
        run_path = Path(run_path)
        self.tb = self.wb = None
        self._wb_axes: set[str] = set()
        if settings.get("tensorboard"):
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run_path / "tensorboard"))
        w = settings.get("wandb") or {}
        if w.get("enabled"):
            import wandb

            options = {}
            if w.get("mode") == "online":
                options["api_key"] = os.environ[w["api_key_env"]]
            # The config holds names of variables, never their values: it may go to W&B as it is.
            self.wb = wandb.init(project=w.get("project") or "ouroboros", entity=w.get("entity"), name=run_id,
                                 id=re.sub(r"[^A-Za-z0-9_-]", "-", run_id)[:128], dir=str(run_path),
                                 mode=w.get("mode") or "offline", config=config, resume="allow",
                                 settings=wandb.Settings(console="off", **options))

    @property
    def active(self) -> bool:
        return self.tb is not None or self.wb is not None

    def log(self, row: dict) -> None:
        step = int(row.get("round", 0))
        values = scalars({k: v for k, v in row.items() if k != "round"})
        if self.tb is not None:
            for name, value in values.items():
                self.tb.add_scalar(name, value, step)
            self.tb.flush()
        if self.wb is not None:
            self._wb_log(values, "round", step)

    def log_steps(self, steps: list[dict]) -> None:
        """The learner's per-step records (`step` and numbers), under `learner_step/`, against the
        learner's optimizer step: many points a round, where a round's row is one."""
        for record in steps:
            step = int(record["step"])
            values = scalars({k: v for k, v in record.items() if k != "step"}, "learner_step/")
            if self.tb is not None:
                for name, value in values.items():
                    self.tb.add_scalar(name, value, step)
            if self.wb is not None:
                self._wb_log(values, "learner_step", step)
        if self.tb is not None:
            self.tb.flush()

    def _wb_log(self, values: dict, axis: str, step: int) -> None:
        # Two x axes in one W&B run: W&B's own step must only grow, and learner steps outrun
        # rounds, so each metric is bound to its axis (`round` or `learner_step`) instead.
        for name in values.keys() - self._wb_axes:
            self.wb.define_metric(name, step_metric=axis)
            self._wb_axes.add(name)
        self.wb.log({**values, axis: step})

    def close(self, status: str) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wb is not None:
            self.wb.finish(exit_code=0 if status == "done" else 1)
            self.wb = None
