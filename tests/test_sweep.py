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
def test_two_trials_run_as_whole_runs_and_report_to_tune(tmp_path):
    """Two trials at once, each a whole run that only evaluates, on the scripted backend (no model
    or learner to build, to keep the suite fast: what is tested is Tune around whole runs, and
    whole runs of the hf backend are tested elsewhere; a trial's learning rounds report the same
    way, one report per round)."""
    require_bwrap()
    proc = subprocess.run(
        [sys.executable, "-m", "ouroboros", "tune", "configs/smoke.yaml", "--grid", "env.heldout_tasks=2,4",
         "--rounds", "0", "--parallel", "2", "--metric", "heldout_valid_rate", "--out", str(tmp_path),
         "--set", "generator.backend=scripted", "--set", 'generator.script=["{}"]'],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert sorted(int(r["param.env.heldout_tasks"]) for r in rows) == [2, 4]
    for row in rows:
        assert row["rounds_done"] == "0" and row["error"] == ""
        run_dir = tmp_path / "trials" / row["run_dir"].rsplit("/", 1)[-1]
        assert str(run_dir) == row["run_dir"]
        # Each trial is a complete run, kept: its config has the trial's value, and what Tune
        # was told is what the run recorded.
        db = sqlite3.connect(run_dir / "ouroboros.db")
        config = json.loads(db.execute("SELECT config FROM runs").fetchone()[0])
        assert config["env"]["heldout_tasks"] == int(row["param.env.heldout_tasks"])
        assert db.execute("SELECT status FROM runs").fetchone()[0] == "done"
        summary = json.loads((run_dir / "latest" / "summary.json").read_text())
        assert [r["round"] for r in summary["rounds"]] == [0]
        assert summary["rounds"][0]["heldout_samples"] == config["env"]["heldout_tasks"]
        assert float(row["final.heldout_valid_rate"]) == summary["rounds"][-1]["heldout_valid_rate"]
    results = json.loads((tmp_path / "results.json").read_text())
    assert all([r for r, _ in t["curve"]] == [0] for t in results)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
