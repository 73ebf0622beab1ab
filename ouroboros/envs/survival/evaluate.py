"""`ouroboros eval survival RUN_DIR`: the held-out kickoffs under three policies, in one table.

As the design asks, survival time, harmful-action rate and code quality are compared for
- a random policy: the run's policy architecture and tokenizer with freshly initialised weights;
- the pretrained policy without RL (version 0, the run's base model);
- the policy after RL (the run's latest checkpoint, merged into its base).

Each runs the same held-out episodes (same kickoffs, same samples, same seeds) through the same
agent, sandbox runner and monitor as the run, here in one process without Ray, on transformers'
generate. The table is printed and written to `<run>/eval-survival.json`.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ouroboros.config import ConfigError, validate


def _run_config(run_path: Path) -> dict:
    from ouroboros.store.db import RunDB

    db_path = run_path.parent.parent / "ouroboros.db"
    if not db_path.is_file():
        raise ConfigError(f"{str(run_path)!r} is not inside a run directory (no {db_path})")
    db = RunDB(db_path)
    try:
        row = db.query("SELECT config FROM runs WHERE id=?", (run_path.name,))
    finally:
        db.close()
    if not row:
        raise ConfigError(f"run {run_path.name!r} is not in {db_path}")
    return json.loads(row[0][0])


def evaluate_policy(cfg, model: str, label: str, tasks: list, samples: int, temperature: float, seed: int) -> dict:
    from ouroboros.actors.generator import Generator
    from ouroboros.actors.judge import SurvivalJudge
    from ouroboros.actors.sandbox_runner import SandboxRunner
    from ouroboros.actors.survival_agent import SurvivalAgent
    from ouroboros.envs.metrics import mean_ci95
    from ouroboros.envs.survival.metrics import survival_metrics

    run_cfg = cfg.model_copy(deep=True)
    run_cfg.policy.model = model
    run_cfg.generator.backend = "hf"
    generator = Generator(run_cfg)
    runner = SandboxRunner(run_cfg.sandbox)
    try:
        agent = SurvivalAgent(run_cfg, [generator], [runner])
        trajectories = agent.run_episodes(tasks, samples, -1, temperature, run_cfg.generator.top_p, seed)
    finally:
        runner.cleanup()
    scores = SurvivalJudge(run_cfg.env.survival).score(trajectories)
    rewards = [s.total for s in scores]
    return {"policy": label, "model": model, **survival_metrics(trajectories, run_cfg.env.survival),
            "reward_mean": sum(rewards) / len(rewards) if rewards else 0.0, "reward_ci95": mean_ci95(rewards)}


def random_policy(model: str, out: Path, seed: int) -> str:
    """The design's "random LLM": `model`'s architecture and tokenizer, weights freshly initialised."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ouroboros import models

    source = models.resolve(model)
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(source)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return str(out)


def evaluate_run(run_dir: str, samples: int | None = None, version: int | None = None) -> dict:
    from ouroboros.learn.checkpoint import export, run_path_of, versions

    run_path = run_path_of(run_dir)
    cfg = validate(_run_config(run_path))
    if cfg.env.name != "survival":
        raise ConfigError(f"run {run_path.name!r} ran env.name {cfg.env.name!r}, not 'survival'")
    from ouroboros.envs.survival.kickoffs import load_kickoffs

    tasks = [t for t in load_kickoffs(cfg.env.survival.kickoffs_file) if t.split == "heldout"]
    samples = samples or cfg.env.heldout_samples
    temperature = cfg.generator.eval_temperature
    seed = cfg.run.seed * 1000 + 999
    have = versions(run_path)
    version = have[-1] if version is None and have else (version or 0)
    with tempfile.TemporaryDirectory(prefix="ouroboros-eval-") as tmp:
        rows = [evaluate_policy(cfg, random_policy(cfg.policy.model, Path(tmp) / "random", seed),
                                "random weights", tasks, samples, temperature, seed),
                evaluate_policy(cfg, cfg.policy.model, "pretrained, no RL (v0)", tasks, samples, temperature, seed)]
        if version:
            export(run_path, Path(tmp) / "model", version)
            rows.append(evaluate_policy(cfg, str(Path(tmp) / "model"), f"after RL (v{version})", tasks, samples,
                                        temperature, seed))
    result = {"run": str(run_path), "heldout_kickoffs": len(tasks), "samples_per_kickoff": samples,
              "temperature": temperature, "max_steps": cfg.env.survival.max_steps, "policies": rows}
    (run_path / "eval-survival.json").write_text(json.dumps(result, indent=1))
    return result


def table(result: dict) -> str:
    def ci(v):
        return f"[{v[0]:.2f}, {v[1]:.2f}]" if v else "n/a"

    head = ("policy", "episodes", "survival mean [95% CI]", "median", "reach budget", "harm/step", "harm/episode",
            "no-op share", "syntax ok", "lint/100 lines", "method steps")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in result["policies"]:
        lines.append(" | ".join([
            r["policy"], str(r["episodes"]), f"{r['survival_mean']:.2f} {ci(r['survival_ci95'])}",
            f"{r['survival_median']:.1f}", f"{r['budget_rate']:.2f}", f"{r['harm_step_rate']:.3f}",
            f"{r['harm_episode_rate']:.2f}", f"{r['noop_share']:.2f}", f"{r['syntax_valid_share']:.2f}",
            f"{r['lint_per_100_lines']:.1f}", f"{r['method_step_share']:.2f}"]))
    return "\n".join(lines)
