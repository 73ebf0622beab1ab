"""Sweeps: whole runs as Ray Tune trials (`ouroboros tune`).

Each trial is one `ouroboros run` of the base config with one point of the grid set on it. It
runs inside the trial's Ray worker, builds its actors on the same cluster, writes a complete run
directory of its own (`OUT/trials/<trial>/`, kept whatever the scheduler decides), and reports
each round's row (held-out metrics, train reward, loss) to Tune, so a scheduler such as ASHA can
stop a poor trial after a round. The results go to `OUT/results.csv`, `OUT/results.json` and a
plot of the chosen metric per round and trial, `OUT/curves.png`.

A trial holds almost nothing itself: its run's actors ask the cluster for their own resources
(ouroboros/placement.py names their strategies, so Tune's placement group does not capture them),
and `--parallel` trials run at once where the cluster has room for that many runs.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from ouroboros.config import ConfigError, apply_override, load_config, parse_override, validate

# What each round reports to Tune: the round's row less its nested parts.
REPORTED = ("round", "weights_version", "heldout_valid_rate", "heldout_pass_rate", "heldout_reward_mean",
            "heldout_samples", "train_reward_mean", "train_valid_rate", "pairs", "loss", "tokens_generated")


def parse_grid(items: list[str]) -> dict[str, list]:
    """`--grid learner.beta=0.05,0.1` (repeatable) -> {"learner.beta": [0.05, 0.1]}; values read
    as YAML, like --set."""
    grid: dict[str, list] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"bad --grid {item!r}: expected key.sub=value1,value2")
        key, raw = item.split("=", 1)
        values = [parse_override(f"{key}={v}")[1] for v in raw.split(",") if v.strip()]
        if not key.strip() or not values:
            raise ConfigError(f"bad --grid {item!r}: expected key.sub=value1,value2")
        grid[key.strip()] = values
    return grid


def trial_config(base: dict, params: dict):
    """The base config with one grid point set on it (refused at once if a value does not fit)."""
    data = json.loads(json.dumps(base))
    for key, value in params.items():
        apply_override(data, [p for p in key.split(".") if p], value)
    return validate(data)


def _row_metrics(row: dict) -> dict:
    return {k: row.get(k) for k in REPORTED if isinstance(row.get(k), (int, float)) or row.get(k) is None}


def run_trial(params: dict, base: dict, out: str, rounds: int | None) -> None:
    """One trial (in its Ray worker): the run, reporting each round to Tune."""
    from ray import tune

    from ouroboros.loop import Loop, Reporter

    cfg = trial_config(base, params)
    name = tune.get_context().get_trial_name()
    run_dir = os.path.join(out, "trials", name)
    cfg.run.out = run_dir

    class TuneReporter(Reporter):
        def round_done(self, row: dict) -> None:
            tune.report({**{k: v for k, v in _row_metrics(row).items() if v is not None}, "run_dir": run_dir})

    Loop(cfg, TuneReporter()).run(rounds=rounds, run_dir=run_dir)


class Sweep:
    def __init__(self, config: str, overrides: list[str], grid: dict[str, list], out: str,
                 metric: str = "heldout_reward_mean", mode: str = "max", scheduler: str = "fifo",
                 rounds: int | None = None, parallel: int = 1, samples: int = 1) -> None:
        if not grid:
            raise ConfigError("ouroboros tune needs at least one --grid key.sub=value1,value2")
        if metric not in REPORTED:
            raise ConfigError(f"--metric {metric!r} is not reported per round: pick one of {', '.join(REPORTED)}")
        self.cfg = load_config(config, overrides)
        for key, values in grid.items():  # every grid point must make a valid config, before Ray starts
            for value in values:
                trial_config(self.cfg.model_dump(by_alias=True), {key: value})
        self.grid, self.metric, self.mode = grid, metric, mode
        self.scheduler, self.rounds, self.parallel, self.samples = scheduler, rounds, parallel, samples
        self.out = os.path.abspath(out)

    def run(self) -> list[dict]:
        import ray
        from ray import tune

        from ouroboros.loop import check_backend_installed, check_trainable, init_ray, preflight_secrets

        rounds = self.cfg.run.rounds if self.rounds is None else self.rounds
        check_trainable(self.cfg, rounds)
        check_backend_installed(self.cfg)
        preflight_secrets(self.cfg)
        # Room for `parallel` whole runs at once: their actors ask the cluster directly.
        own = init_ray(self.cfg, runs=self.parallel)
        try:
            scheduler = None
            if self.scheduler == "asha":
                from ray.tune.schedulers import ASHAScheduler

                # time_attr "round": a trial is judged on its held-out metric after the same round as the others.
                scheduler = ASHAScheduler(time_attr="round", max_t=max(rounds, 1), grace_period=1, reduction_factor=2)
            trainable = tune.with_parameters(run_trial, base=self.cfg.model_dump(by_alias=True), out=self.out,
                                             rounds=self.rounds)
            # The trial itself only waits on its run's actors, which reserve their own resources.
            trainable = tune.with_resources(trainable, {"cpu": 0.01})
            space = {key: tune.grid_search(values) for key, values in self.grid.items()}
            tuner = tune.Tuner(
                trainable, param_space=space,
                tune_config=tune.TuneConfig(metric=self.metric, mode=self.mode, scheduler=scheduler,
                                            num_samples=self.samples, max_concurrent_trials=self.parallel),
                run_config=tune.RunConfig(name="tune", storage_path=os.path.join(self.out, "tune-state"),
                                          verbose=0),
            )
            grid = tuner.fit()
        finally:
            if own:
                ray.shutdown()
        return self._report(grid, rounds)

    def _report(self, grid, rounds: int) -> list[dict]:
        rows = []
        for result in grid:
            history = result.metrics_dataframe
            curve = [] if history is None or self.metric not in history else [
                (int(r), float(v)) for r, v in zip(history["round"], history[self.metric]) if v == v]
            last = result.metrics or {}
            config = {k: v for k, v in (result.config or {}).items()}
            rows.append({
                **{f"param.{k}": v for k, v in config.items()},
                "rounds_done": (max(r for r, _ in curve) if curve else -1),
                "stopped_early": bool(curve) and max(r for r, _ in curve) < rounds and result.error is None,
                f"final.{self.metric}": last.get(self.metric),
                f"best.{self.metric}": (max if self.mode == "max" else min)(v for _, v in curve) if curve else None,
                "error": str(result.error).splitlines()[0][:300] if result.error else None,
                "run_dir": last.get("run_dir"),
                "curve": curve,
            })
        Path(self.out).mkdir(parents=True, exist_ok=True)
        (Path(self.out) / "results.json").write_text(json.dumps(rows, indent=1, default=str))
        columns = [c for c in rows[0] if c != "curve"] if rows else []
        with open(Path(self.out) / "results.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        self._plot(rows)
        return rows

    def _plot(self, rows: list[dict]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for row in rows:
            if row["curve"]:
                label = ", ".join(f"{k[6:]}={v}" for k, v in row.items() if k.startswith("param."))
                ax.plot([r for r, _ in row["curve"]], [v for _, v in row["curve"]], marker="o", label=label)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.set_ylabel(self.metric)
        ax.set_title(f"{self.metric} per round, one line per trial")
        if any(row["curve"] for row in rows):
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(Path(self.out) / "curves.png", dpi=100)
        plt.close(fig)
