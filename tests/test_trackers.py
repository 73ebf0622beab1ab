"""Each round's metrics reach TensorBoard and Weights & Biases (offline) through the recorder, the
run's one writer; an online W&B without its key is one clear line before the run starts, and
the key never lands in a file."""
from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest

from ouroboros.actors.recorder import Recorder
from ouroboros.config import Config, ConfigError
from ouroboros.store.trackers import scalars

ROUNDS = [
    {"round": 0, "weights_version": 0, "heldout_reward_mean": 0.25, "heldout_reward_ci95": [0.1, 0.4],
     "heldout_samples": 8, "seconds": {"eval": 1.5, "total": 1.5}},
    {"round": 1, "weights_version": 1, "heldout_reward_mean": 0.5, "heldout_reward_ci95": [0.3, 0.7],
     "heldout_samples": 8, "loss": 0.61, "learner": {"algorithm": "grpo", "steps": 6, "kl_ref": None},
     "generator_learner_kl": math.nan, "eval_weights_versions": [1], "seconds": {"learn": 3.0, "total": 9.0}},
]


def test_a_round_row_becomes_flat_named_numbers():
    flat = scalars({k: v for k, v in ROUNDS[1].items() if k != "round"})
    assert flat["learner/steps"] == 6.0 and flat["seconds/learn"] == 3.0
    assert flat["heldout_reward_ci95_lo"] == 0.3 and flat["heldout_reward_ci95_hi"] == 0.7
    # Texts, lists, None and NaN are not plotted.
    assert not {"learner/algorithm", "learner/kl_ref", "generator_learner_kl", "eval_weights_versions"} & set(flat)


def test_rounds_reach_tensorboard_and_wandb_offline_and_the_key_stays_out(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="installed by `make venv` (requirements.txt)")
    pytest.importorskip("wandb", reason="installed by `make venv` (requirements.txt)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    canary = "wandb-key-canary-0123456789abcdef0123456789abcdef"
    monkeypatch.setenv("WANDB_API_KEY", canary)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = Config.model_validate({"tracking": {"tensorboard": True, "wandb": {"enabled": True, "mode": "offline"}}})
    rec = Recorder(str(tmp_path / "out"), "track-1", "track", cfg.model_dump(by_alias=True))
    for row in ROUNDS:
        rec.start_round(row["round"], row["weights_version"])
        if row["round"] == 1:
            rec.record_learner_steps(1, [{"step": s, "loss": 0.7 - s / 10, "grad_norm": 1.5, "kl_ref": None}
                                         for s in (1, 2, 3)])
        rec.finish_round(row)
    rec.close("done")
    run = tmp_path / "out" / "runs" / "track-1"

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"heldout_reward_mean", "heldout_reward_ci95_lo", "learner/steps", "seconds/total"} <= tags
    assert [(e.step, e.value) for e in events.Scalars("heldout_reward_mean")] == [(0, 0.25), (1, 0.5)]
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, pytest.approx(0.61))]
    # The learner's steps on their own axis, and in the round's shard.
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("learner_step/loss")] == [(1, 0.6), (2, 0.5), (3, 0.4)]
    assert "learner_step/kl_ref" not in tags  # null: left out
    steps = pq.read_table(run / "shards" / "round-0001" / "learner-steps.parquet").to_pylist()
    assert [(s["run_id"], s["round"], s["step"], s["grad_norm"]) for s in steps] == [("track-1", 1, n, 1.5)
                                                                                      for n in (1, 2, 3)]

    # W&B offline: one run named by the run id, its history records in the run file that
    # `wandb sync` sends (a binary log: its metric names are read from it as bytes).
    [offline] = list((run / "wandb").glob("offline-run-*-track-1"))
    history = (offline / "run-track-1.wandb").read_bytes()
    assert all(name.encode() in history for name in ("heldout_reward_mean", "learner/steps", "seconds/total",
                                                      "learner_step/loss", "learner_step/grad_norm"))
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path


def test_online_wandb_without_its_key_is_one_clear_line_before_the_run(monkeypatch):
    from ouroboros.loop import preflight_secrets

    monkeypatch.delenv("MY_WANDB_KEY", raising=False)
    cfg = Config.model_validate({"tracking": {"wandb": {"enabled": True, "mode": "online",
                                                        "api_key_env": "MY_WANDB_KEY"}}})
    with pytest.raises(ConfigError) as info:
        preflight_secrets(cfg)
    assert "$MY_WANDB_KEY is not set" in str(info.value) and "\n" not in str(info.value)
