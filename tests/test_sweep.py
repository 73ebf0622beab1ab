"""`ouroboros tune`: whole runs as Ray Tune trials, each with its own kept run directory."""
import csv
import json
import sqlite3
import subprocess
import sys

import pytest

from conftest import require_bwrap
from ouroboros.config import ConfigError
from ouroboros.sweep import parse_grid, trial_config


def test_grid_values_are_read_as_yaml_and_bad_points_are_refused():
    assert parse_grid(["learner.beta=0.05,0.1", "env.agents=1,2"]) == {"learner.beta": [0.05, 0.1],
                                                                         "env.agents": [1, 2]}
    with pytest.raises(ConfigError, match="expected key.sub=value1,value2"):
        parse_grid(["learner.beta"])
    with pytest.raises(ConfigError):
        trial_config({}, {"learner.beta": "lots"})


def test_a_grid_point_that_is_not_a_config_stops_the_sweep_before_ray(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ouroboros", "tune", "configs/smoke.yaml", "--grid",
                           "learner.no_such_key=1,2", "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "learner.no_such_key" in proc.stderr, proc.stderr
    assert not (tmp_path / "results.csv").exists()


@pytest.mark.slow
def test_two_trials_run_as_whole_runs_and_report_their_rounds(tiny_model_path, tmp_path):
    require_bwrap()
    proc = subprocess.run(
        [sys.executable, "-m", "ouroboros", "tune", "configs/smoke.yaml", "--grid", "learner.learning_rate=0.001,0.0001",
         "--rounds", "1", "--parallel", "2", "--metric", "heldout_valid_rate", "--out", str(tmp_path),
         "--set", "env.heldout_tasks=4", "--set", "env.train_tasks_per_round=4", "--set", "generator.max_new_tokens=64"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert sorted(float(r["param.learner.learning_rate"]) for r in rows) == [0.0001, 0.001]
    for row in rows:
        assert row["rounds_done"] == "1" and row["error"] == ""
        run_dir = tmp_path / "trials" / row["run_dir"].rsplit("/", 1)[-1]
        assert str(run_dir) == row["run_dir"]
        # Each trial is a complete run, kept: its config has the trial's value, and what Tune
        # was told is what the run recorded.
        db = sqlite3.connect(run_dir / "ouroboros.db")
        config = json.loads(db.execute("SELECT config FROM runs").fetchone()[0])
        assert config["learner"]["learning_rate"] == float(row["param.learner.learning_rate"])
        assert db.execute("SELECT status FROM runs").fetchone()[0] == "done"
        summary = json.loads((run_dir / "latest" / "summary.json").read_text())
        assert [r["round"] for r in summary["rounds"]] == [0, 1]
        assert float(row["final.heldout_valid_rate"]) == summary["rounds"][-1]["heldout_valid_rate"]
    results = json.loads((tmp_path / "results.json").read_text())
    assert all([r for r, _ in t["curve"]] == [0, 1] for t in results)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
