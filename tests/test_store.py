import json
import sqlite3

import pyarrow.parquet as pq

from ouroboros.actors.judge import TasksJudge
from ouroboros.actors.recorder import Recorder
from ouroboros.config import JudgeConfig
from ouroboros.types import Action, Completion, ExecResult, Request, Step, Trajectory, WeightsRef


def _traj(i, task, valid, passed, version=1):
    req = Request(id=f"t{i}", messages=[{"role": "user", "content": "q"}])
    comp = Completion(request_id=req.id, text=f"reply {i}", token_ids=[1, 2, 3], logprobs=[-0.1, -0.2, -0.3],
                      weights_version=version, backend="scripted")
    res = ExecResult(0, "out", "", False, False, 0.1, False) if valid else None
    step = Step(0, req, comp, Action("run" if valid else None, "x", "", valid, "" if valid else "bad"), res,
                {"ran": valid, "passed": passed, "total": 4})
    return Trajectory(id=f"t{i}", task_id=task, split="train", round=1, sample=i, steps=[step])


def test_recorder_writes_db_shards_pairs_and_summary_idempotently(tmp_path):
    rec = Recorder(str(tmp_path), "run-1", "test", {"a": 1})
    trajs = [_traj(0, "a", True, 4), _traj(1, "a", False, 0), _traj(2, "b", True, 1), _traj(3, "b", True, 1)]
    scores = TasksJudge(JudgeConfig()).score(trajs)
    rec.start_round(1, 0)
    for _ in range(2):  # a retried write must not duplicate rows
        metrics, pairs = rec.record(1, "train", trajs, scores, make_pairs=True)
    assert metrics["samples"] == 4 and metrics["pairs"] == 1 and metrics["tokens"] == 12
    assert metrics["valid_rate"] == 0.75 and metrics["weights_versions"] == [1]
    rec.record_weights(WeightsRef(1, "lora", None, "abc", 10, "tiny"))
    rec.finish_round({"round": 1, "weights_version": 1})
    rec.close("done")

    db = sqlite3.connect(tmp_path / "ouroboros.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT COUNT(*) FROM completions").fetchone()[0] == 4
    assert db.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 4
    assert db.execute("SELECT chosen, rejected FROM pairs").fetchall() == [("reply 0", "reply 1")]
    assert db.execute("SELECT status FROM runs").fetchone()[0] == "done"
    assert db.execute("SELECT status FROM rounds").fetchone()[0] == "done"
    assert db.execute("SELECT checksum FROM weights WHERE version=1").fetchone()[0] == "abc"
    assert json.loads(db.execute("SELECT action FROM completions WHERE trajectory_id='t1'").fetchone()[0])["name"] is None

    table = pq.read_table(tmp_path / "shards" / "round-0001" / "train-completions.parquet")
    assert table.num_rows == 4 and table.column("token_ids").to_pylist()[0] == [1, 2, 3]
    assert pq.read_table(tmp_path / "shards" / "round-0001" / "pairs.parquet").num_rows == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["run"] == "run-1" and summary["rounds"] == [{"round": 1, "weights_version": 1}]
