"""Resuming a run that stopped (killed, interrupted, failed, or finished and now extended).

`ouroboros run --resume DIR` finds the run (DIR is a run directory, whose `latest` run is
meant, or one run's own `runs/<run id>/`), and carries it on under the same run id:

- the rounds it finished stay as they are, rows, shards, summary and checkpoints;
- the round it was in when it stopped is dropped whole (the recorder's `rewind`), and run again;
- the learner comes back from the checkpoint of the version the last finished round ended on:
  LoRA adapter, optimizer, value head, step and version counters, RNG states;
- every generator loads that version before any rollout.

Sampling is seeded per request from the run seed, the round and the task, and training from
the run seed and the version, so the resumed rounds make the same samples and the same updates
an uninterrupted run makes (tests/test_resume.py checks the final adapter bit for bit on CPU).
With `run.async` the first resumed round rolls out on the restored version, one version fresher
than the uninterrupted run had it, so an async run resumes correctly but not bit-equal.

The saved config is the run's config: a `CONFIG` or `--set` given with `--resume` may only change
the keys in `CHANGEABLE` (how long to run, where Ray is); any other difference is refused
before anything starts, naming the key.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from ouroboros.config import Config, ConfigError, validate

# Keys a resumed run may change: they decide how long and where it runs, not what it computes.
CHANGEABLE = ("run.rounds", "run.time_budget_s", "run.out", "ray.", "tracking.", "generator.sync_timeout_s",
              "generator.weights_transport")


class ResumeError(ConfigError):
    """A directory that cannot be resumed, or a config that differs from the saved one."""


@dataclass
class ResumePoint:
    root: Path                  # the run directory (--out): ouroboros.db lives here
    run_id: str
    config: dict                # the run's saved config
    rounds: list[dict] = field(default_factory=list)  # the finished rounds' rows, 0..k
    version: int = 0            # the weights version the last finished round ended on
    checkpoint: dict[str, bytes] | None = None  # that version's checkpoint files (None: version 0)

    @property
    def next_round(self) -> int:
        return len(self.rounds)


def _locate(path: str | Path) -> tuple[Path, str | None]:
    """(run directory, run id or None for its latest run) of what the user passed."""
    p = Path(path)
    if (p / "ouroboros.db").is_file():
        return p, None
    if p.parent.name == "runs" and (p.parent.parent / "ouroboros.db").is_file():
        return p.parent.parent, p.name
    raise ResumeError(f"--resume {str(p)!r} is not a run: pass the run directory of `ouroboros run` (its --out, which "
                      "holds ouroboros.db) or one of its runs/<run id>/")


def find(path: str | Path) -> ResumePoint:
    root, run_id = _locate(path)
    if run_id is None:
        latest = root / "latest"
        if not latest.exists():
            raise ResumeError(f"{str(root)!r} has no 'latest' run to resume: pass one of its runs/<run id>/")
        run_id = latest.resolve().name
    db = sqlite3.connect(f"file:{root / 'ouroboros.db'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT config FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise ResumeError(f"run {run_id!r} is not in {str(root / 'ouroboros.db')!r}: nothing to resume")
        config = json.loads(row[0])
        done = {r: json.loads(m) for r, m in db.execute(
            "SELECT round, metrics FROM rounds WHERE run_id=? AND status='done' ORDER BY round", (run_id,))}
    finally:
        db.close()
    if not isinstance(config, dict) or "policy" not in config:
        raise ResumeError(f"run {run_id!r} was not made by `ouroboros run` (its saved config has no policy): "
                          "only such runs resume")
    rounds = []
    while len(rounds) in done:  # the finished rounds from 0 on; anything after a gap is redone
        rounds.append(done[len(rounds)])
    point = ResumePoint(root, run_id, config, rounds)
    if rounds:
        point.version = int(rounds[-1].get("weights_version") or 0)
    if point.version:
        from ouroboros.learn.checkpoint import version_dir

        ckpt = version_dir(root / "runs" / run_id, point.version)
        if not (ckpt / "learner_state.pt").is_file():
            raise ResumeError(f"round {len(rounds) - 1} ended on weights v{point.version}, but its checkpoint "
                              f"{str(ckpt)!r} is missing or incomplete: the run cannot resume exactly")
        point.checkpoint = {f.name: f.read_bytes() for f in ckpt.iterdir() if f.is_file()}
    return point


def _flat(data, prefix: str = "") -> dict:
    out = {}
    for key, value in (data or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def changed_keys(a: dict, b: dict) -> list[str]:
    """Keys whose value differs between two flattened configs, less those a resumed run may change."""
    return sorted(k for k in set(a) | set(b)
                  if a.get(k) != b.get(k) and not any(k == c or (c.endswith(".") and k.startswith(c))
                                                      for c in CHANGEABLE))


def resumed_config(point: ResumePoint, wanted: Config | None, overrides: list[str] = ()) -> Config:
    """The config to resume with: the saved one, with `overrides`; or `wanted` (a CONFIG the user
    passed), which must equal the saved one except where a resumed run may differ."""
    from ouroboros.config import apply_override, parse_override

    saved = validate(point.config)  # the saved config as this version reads it (new keys get defaults)
    if wanted is None:
        data = saved.model_dump(by_alias=True)
        for item in overrides:
            apply_override(data, *parse_override(item))
        wanted = validate(data)
    a, b = _flat(saved.model_dump(by_alias=True)), _flat(wanted.model_dump(by_alias=True))
    diff = changed_keys(a, b)
    if diff:
        shown = "; ".join(f"{k}: {a.get(k)!r} saved, {b.get(k)!r} given" for k in diff[:5])
        if len(diff) > 5:
            shown += f"; and {len(diff) - 5} more key(s)"
        raise ResumeError(f"the config differs from run {point.run_id!r}'s saved config ({shown}): a resumed run keeps "
                          f"its config, except {', '.join(c.rstrip('.') for c in CHANGEABLE)}; start a new run to "
                          "change the rest")
    return wanted
