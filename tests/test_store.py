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

    run = tmp_path / "runs" / "run-1"
    table = pq.read_table(run / "shards" / "round-0001" / "train-completions.parquet")
    assert table.num_rows == 4 and table.column("token_ids").to_pylist()[0] == [1, 2, 3]
    assert set(table.column("run_id").to_pylist()) == {"run-1"}
    pairs = pq.read_table(run / "shards" / "round-0001" / "pairs.parquet")
    assert pairs.num_rows == 1 and pairs.column("run_id").to_pylist() == ["run-1"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["run"] == "run-1" and summary["rounds"] == [{"round": 1, "weights_version": 1}]
    assert (tmp_path / "latest").resolve() == run.resolve()


def _dump(db: sqlite3.Connection, run_id: str) -> dict:
    """Every row a run has in the tables the Recorder writes."""
    return {table: sorted(db.execute(f"SELECT * FROM {table} WHERE {'id' if table == 'runs' else 'run_id'}=?",
                                     (run_id,)).fetchall(), key=repr)
            for table in ("runs", "rounds", "completions", "scores", "pairs", "weights")}


def _one_run(root, run_id: str, text: str) -> None:
    rec = Recorder(str(root), run_id, "test", {"run": run_id})
    trajs = [_traj(0, "a", True, 4), _traj(1, "a", False, 0)]  # the same ids in every run
    for t in trajs:
        t.steps[0].completion.text = f"{text} {t.id}"
    rec.start_round(1, 0)
    rec.record(1, "train", trajs, TasksJudge(JudgeConfig()).score(trajs), make_pairs=True)
    rec.record_weights(WeightsRef(1, "lora", None, f"sum-{run_id}", 10, "tiny"))
    rec.finish_round({"round": 1, "weights_version": 1, "who": run_id})
    rec.close("done")


def test_a_second_run_into_the_same_directory_keeps_the_first_runs_rows_shards_and_summary(tmp_path):
    _one_run(tmp_path, "first", "alpha")
    db = sqlite3.connect(tmp_path / "ouroboros.db")
    before = _dump(db, "first")
    first = tmp_path / "runs" / "first"
    files_before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    assert before["completions"] and before["pairs"] and before["scores"]

    _one_run(tmp_path, "second", "beta")  # the same trajectory ids, pair ids and round numbers
    assert _dump(db, "first") == before
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == files_before
    assert db.execute("SELECT COUNT(*) FROM completions").fetchone()[0] == 4
    texts = {r[0] for r in db.execute("SELECT text FROM completions WHERE run_id='second'")}
    assert texts == {"beta t0", "beta t1"}
    second = json.loads((tmp_path / "runs" / "second" / "summary.json").read_text())
    assert second["run"] == "second" and second["rounds"][0]["who"] == "second"
    assert (tmp_path / "latest").resolve() == (tmp_path / "runs" / "second").resolve()


def test_a_database_from_before_runs_shared_one_is_rekeyed_with_its_rows(tmp_path):
    from ouroboros.store.db import RunDB

    path = tmp_path / "ouroboros.db"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE completions (trajectory_id TEXT PRIMARY KEY, run_id TEXT, round INTEGER, phase TEXT,
            task_id TEXT, split TEXT, sample INTEGER, request_id TEXT, prompt TEXT, text TEXT,
            weights_version INTEGER, backend TEXT, prompt_tokens INTEGER, completion_tokens INTEGER,
            finish_reason TEXT, action TEXT, action_valid INTEGER, action_error TEXT, exec_result TEXT, outcome TEXT);
        CREATE INDEX completions_round ON completions (run_id, round, phase);
        CREATE TABLE pairs (id TEXT PRIMARY KEY, run_id TEXT, round INTEGER, task_id TEXT, prompt TEXT,
            chosen TEXT, rejected TEXT, chosen_reward REAL, rejected_reward REAL, chosen_trajectory TEXT,
            rejected_trajectory TEXT);
        INSERT INTO completions (trajectory_id, run_id, round, text) VALUES ('t0', 'old', 1, 'kept');
        INSERT INTO pairs (id, run_id, round, chosen) VALUES ('p', 'old', 1, 'kept');
    """)
    old.commit()
    old.close()
    db = RunDB(path)
    db.upsert("completions", [{"trajectory_id": "t0", "run_id": "new", "round": 1, "text": "new"}])
    db.upsert("pairs", [{"id": "p", "run_id": "new", "round": 1, "chosen": "new"}])
    assert sorted(db.query("SELECT run_id, text FROM completions")) == [("new", "new"), ("old", "kept")]
    assert sorted(db.query("SELECT run_id, chosen FROM pairs")) == [("new", "new"), ("old", "kept")]
    db.close()


def test_knowledge_scope_filters_by_run_unless_the_config_names_earlier_runs(tmp_path):
    from ouroboros.store.experiments import ExperimentStore, KnowledgeScope

    store = ExperimentStore(tmp_path / "ouroboros.db")
    names = {}
    for run_id, note in [("run-a", "alpha"), ("run-b", "beta"), ("run-c", "gamma")]:
        eid = store.start(run_id, 0, "owner", "", "goal")
        store.finish(eid, "finalized", "finalized", {"notes": f"prime count {note}"},
                     {"notes": f"prime count {note}"})
        names[eid] = run_id

    def seen(scope):
        return ({names[h["experiment_id"]] for h in store.search("prime count", 10, scope=scope)},
                {names[i] for i in store.recent_finished(10, scope=scope)})

    assert seen(KnowledgeScope.of_run("run-c")) == ({"run-c"}, {"run-c"})
    assert seen(KnowledgeScope.of_run("run-c", ["run-a"])) == ({"run-a", "run-c"}, {"run-a", "run-c"})
    assert seen(KnowledgeScope.of_run("run-c", ["*"])) == ({"run-a", "run-b", "run-c"},) * 2
    assert seen(KnowledgeScope(runs=())) == (set(), set())  # a scope that sees nothing
    store.close()
