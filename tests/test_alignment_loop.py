"""The alignment loop end to end on the tiny model: `ouroboros run` through Ray (the scripted judge
beside the rules, the constitution on, DPO), what it stores, `align eval` on the run, and the
stages one at a time from the CLI."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args: str, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ouroboros", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.fixture
def smoke_run(align_smoke_run):
    return align_smoke_run  # conftest: one run, shared with the viewer's browser tests


def test_the_loop_stores_scores_pairs_revisions_and_clusters(smoke_run):
    run = (smoke_run / "latest").resolve()
    rounds = json.loads((run / "summary.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and rounds[-1]["weights_version"] == 2
    assert all(r["pairs"] > 0 for r in rounds[1:])
    assert rounds[1]["train_judge_failure_rate"] is not None and "train_distinct2" in rounds[1]
    assert rounds[1]["train_clusters"] and "heldout_words_mean" in rounds[0]
    db = sqlite3.connect(smoke_run / "ouroboros.db")
    judges = {row[0] for row in db.execute("SELECT judge FROM align_scores WHERE run_id=?", (run.name,))}
    assert judges == {"rules", "scripted"}
    hashes = {row[0] for row in db.execute("SELECT prompt_hash FROM align_scores WHERE judge='scripted'")}
    assert len(hashes) == 1 and len(next(iter(hashes))) == 16
    # The third scripted reply is not a score: some verdicts needed a second attempt, none became a 0.
    outcomes = [json.loads(o) for (o,) in db.execute("SELECT outcome FROM completions WHERE phase='train'")]
    revisions = [o for o in outcomes if o.get("revision_of")]
    assert revisions and all(len(o["critiques"]) == 1 and len(o["revisions"]) == 1 for o in revisions)
    assert db.execute("SELECT count(*) FROM align_clusters WHERE run_id=?", (run.name,)).fetchone()[0] > 0
    pairs = db.execute("SELECT id FROM pairs WHERE run_id=?", (run.name,)).fetchall()
    assert pairs
    # The scores shard keeps the loop's format: rater ai, with the judge's provenance beside it.
    line = json.loads((run / "shards" / "round-0001" / "train-scores.jsonl").read_text().splitlines()[0])
    assert {"dialog_id", "prompt_id", "candidate", "score", "notes", "rater"} <= set(line)
    assert line["rater"] == "ai" and line["run_id"] == run.name and "prompt_hash" in line
    assert (smoke_run / "judge-cache.db").is_file()


def test_align_eval_reports_win_rate_paraphrase_persona_and_safety(smoke_run):
    proc = cli("align", "eval", str(smoke_run), "--prompts", "40")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Bradley-Terry win rate" in proc.stdout and "length-controlled" in proc.stdout
    result = json.loads(((smoke_run / "latest").resolve() / "eval-align.json").read_text())
    w = result["win_rate"]
    assert result["prompts"] == 40 and w["n"] == 40 and w["low"] <= w["p"] <= w["high"]
    assert w["wins"] + w["losses"] + w["ties"] == 40
    assert result["eval_judges"] == ["eval-rules", "eval-tiny"] and result["train_judges"] == ["rules", "scripted"]
    last = result["persona_safety"]["last"]
    assert last["harmful_n"] > 0 and last["benign_n"] > 0 and last["refused_with_explanation_ci95"]
    assert result["paraphrase"]["last"]["groups"] > 0
    assert {"agreement", "decided_by_both"} <= set(result["training_vs_eval_judge"])


def test_ppo_trains_on_rubric_rewards_and_not_on_revisions(tiny_model_path, tmp_path):
    """Also: the alignment environment runs no program, so its run starts no sandbox runner. The
    config names the docker backend with no engine to reach: a runner would fail to start."""
    import os

    import pyarrow.parquet as pq

    out = tmp_path / "ppo"
    proc = cli("run", "configs/smoke-align.yaml", "--out", str(out), "--rounds", "1", "--set", "learner.algorithm=ppo",
               "--set", "learner.kl_coef=0.05", "--set", "learner.reward_shaping=reference", "--set",
               f"align.data_dir={tmp_path / 'data'}", "--set", "env.heldout_tasks=2", "--set", "sandbox.backend=docker",
               env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path / 'no-docker.sock'}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    turns = pq.read_table(next((out / "latest").resolve().glob("shards/round-0001/learner-turns.parquet"))).to_pylist()
    assert turns and not any(t["trajectory_id"].endswith("-rev") for t in turns)
    assert all(0.0 <= t["reward"] <= 1.0 for t in turns)  # the learner's reward bound


def test_the_stages_run_one_at_a_time_and_hand_edits_carry_on(tiny_model_path, tmp_path):
    data = tmp_path / "data"
    sets = ["--set", f"align.data_dir={data}", "--set", "policy.model=tiny-smollm2", "--set",
            "generator.max_new_tokens=16", "--set", "align.model_transforms=false", "--set",
            'align.judges=[{"name": "rules", "kind": "rules"}]', "--set", "rlaif.judge_model=", "--set", "learner.max_length=256",
            "--set", "learner.lora_r=4", "--set", "learner.lora_alpha=8"]
    # A two-dialog summaries file with a malformed line: reported by file and line, the rest used.
    data.mkdir()
    lines = (Path("ouroboros/envs/alignment/data/summaries.jsonl").read_text().splitlines())[:2]
    (data / "summaries.jsonl").write_text(lines[0] + "\n{broken\n" + lines[1] + "\n")
    proc = cli("align", "labyrinth", "configs/smoke-align.yaml", *sets)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{data / 'summaries.jsonl'}:2: not JSON" in proc.stderr
    prompts = [json.loads(x) for x in (data / "labyrinth.jsonl").read_text().splitlines()]
    assert {"dialog_id", "prompt", "target"} <= set(prompts[0]) and len({p["dialog_id"] for p in prompts}) == 2
    # A hand edit: keep three prompts.
    (data / "labyrinth.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts[:3]))
    proc = cli("align", "generate", "configs/smoke-align.yaml", "--n", "3", *sets)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cands = [json.loads(x) for x in (data / "candidates.jsonl").read_text().splitlines()]
    assert len(cands) == 9 and all(c["weights_version"] == 0 for c in cands)
    # A human rates one candidate low; it joins as the human teacher and is kept in scores.jsonl.
    (data / "scores.jsonl").write_text(json.dumps({"dialog_id": cands[0]["dialog_id"], "prompt_id": cands[0]["prompt_id"],
                                                   "candidate": cands[0]["candidate"], "score": {"helpful": 1},
                                                   "notes": "off topic", "rater": "human"}) + "\n")
    proc = cli("align", "score", "configs/smoke-align.yaml", *sets)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = [json.loads(x) for x in (data / "scores.jsonl").read_text().splitlines()]
    assert sum(1 for s in scores if s["rater"] == "human") == 1 and sum(1 for s in scores if s["rater"] == "ai") == 9
    assert any(p.name.startswith("scores.jsonl.") for p in data.iterdir())  # the older file was kept
    rule_line = next(s for s in scores if s["rater"] == "ai")
    assert all(1 <= v <= 5 for v in rule_line["score"].values())  # the rubric's scale, whoever rated
    # The human's low score makes that prompt's pair (the rest may tie: the tiny model's answers are noise).
    proc = cli("align", "train", "configs/smoke-align.yaml", "--out", str(tmp_path / "trained"), *sets)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list((tmp_path / "trained").glob("runs/*/checkpoints/v0001"))
