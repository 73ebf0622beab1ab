"""A real multi-node Ray cluster on this machine (cluster/local_cluster.py): a head and two worker
nodes, each its own raylet with its own resources, all on loopback. The main job goes to it with
`ray job submit`, as on a cloud cluster, and its actors land where ouroboros/placement.py says."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import processes_tagged, require_bwrap

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.cluster
def test_the_main_job_runs_on_a_three_node_cluster_with_its_actors_placed_and_survives_a_lost_node(
        tiny_model_path, tmp_path):
    require_bwrap()
    from ray.util.state import list_actors, list_nodes

    tag = f"local-cluster-{os.getpid()}-{time.time_ns()}"  # every process of this cluster, and its jobs
    info, removal = tmp_path / "cluster.json", tmp_path / "remove"
    cluster = subprocess.Popen([sys.executable, str(REPO / "cluster" / "local_cluster.py"), "--workers", "2",
                                "--fake-gpus", "1", "--dashboard-port", "0", "--info", str(info),
                                "--wait-s", "300", "--remove-from", str(removal)],
                               env=dict(os.environ, OUROBOROS_TEST_TAG=tag), start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 360  # a loaded 2-core host starts 3 raylets and a dashboard slowly
        while not info.exists():
            assert cluster.poll() is None, cluster.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the cluster did not come up in 360 s"
            time.sleep(0.5)
        meta = json.loads(info.read_text())
        head, workers = meta["head_node_id"], [w["node_id"] for w in meta["workers"]]
        nodes = {n.node_id: n for n in list_nodes(address=meta["dashboard"], detail=True)}
        assert set(nodes) == {head, *workers} and all(n.node_ip == "127.0.0.1" for n in nodes.values())
        assert nodes[head].resources_total.get("CPU", 0) == 0  # the head runs drivers, no actor needs it
        assert all(nodes[w].resources_total.get("sandbox") == 2 for w in workers)
        assert [nodes[w].resources_total.get("GPU", 0) for w in workers] == [0, 1]  # the fake GPU

        # The main job, sent as on a cloud cluster; mid-round, the worker node its generator runs on
        # is taken away as a lost machine (every process of it SIGKILLed).
        out = tmp_path / "run"
        ray_cli = Path(sys.executable).with_name("ray")
        job = subprocess.Popen([str(ray_cli), "job", "submit", "--address", meta["dashboard"], "--submission-id",
                                f"test-{tag}", "--", "bash", str(REPO / "cluster" / "job.sh"), "configs/smoke.yaml",
                                "--rounds", "0", "--set", "env.heldout_tasks=20", "--set", "env.heldout_samples=3",
                                "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            where = _placed_once_the_round_runs(meta["dashboard"], job)
            # The job's driver runs on the head: the recorder, the run directory's one writer, is
            # pinned there; the sandbox runners are spread over both sandbox nodes.
            assert where["Recorder"] == [head]
            assert sorted(where["SandboxRunner"]) == sorted(workers)
            assert where["LiveWeights"] == [head]
            assert set(where["Generator"]) <= set(workers)
            assert "Learner" not in where  # a run that only evaluates builds no learner
            lost = where["Generator"][0]
            kept = next(w for w in workers if w != lost)
            removal.write_text(lost)
            removed_at = time.time()
            os.kill(cluster.pid, signal.SIGUSR1)
            log, _ = job.communicate(timeout=600)
        finally:
            if job.poll() is None:
                job.kill()
        assert job.returncode == 0 and "succeeded" in log, log[-3000:]
        assert lost in json.loads(info.read_text())["removed"]
        nodes = {n.node_id: n.state for n in list_nodes(address=meta["dashboard"], detail=True)}
        assert nodes[lost] == "DEAD" and nodes[kept] == "ALIVE"

        # The round finished on the nodes left: every held-out sample there once, scored once.
        rows = json.loads((out / "latest" / "summary.json").read_text())["rounds"]
        assert [r["round"] for r in rows] == [0] and rows[0]["heldout_samples"] == 60  # round 0: the evaluation
        db = sqlite3.connect(out / "ouroboros.db")
        try:
            started, finished = db.execute("SELECT started_at, finished_at FROM rounds").fetchone()
            assert started < removed_at < finished  # the node went mid-round
            assert db.execute("SELECT COUNT(*), COUNT(DISTINCT trajectory_id) FROM completions").fetchone() == (60, 60)
            assert db.execute("SELECT COUNT(*), COUNT(DISTINCT trajectory_id) FROM scores").fetchone() == (60, 60)
            assert db.execute("SELECT status FROM runs").fetchall() == [("done",)]
        finally:
            db.close()
        # What ran on the lost node came back on the other one.
        after = [a for a in list_actors(address=meta["dashboard"], detail=True, limit=1000,
                                        raise_on_missing_output=False) if a.class_name == "Generator"]
        assert [(a.node_id, a.num_restarts >= 1) for a in after] == [(kept, True)]
    finally:
        os.killpg(cluster.pid, signal.SIGTERM)  # the script stops its own nodes
        cluster.communicate(timeout=120)
    deadline = time.monotonic() + 30
    while processes_tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not processes_tagged(tag), "a process of the cluster outlived it"


def _placed_once_the_round_runs(dashboard: str, job) -> dict[str, list[str]]:
    """Where each actor class runs (node ids), read once the job's round-0 rollout is under way
    (an agent's `run_episodes` call is running)."""
    from ray.util.state import list_actors, list_tasks

    deadline = time.monotonic() + 300
    while True:
        assert job.poll() is None, job.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the job's rollout did not start in 300 s"
        running = list_tasks(address=dashboard, filters=[("state", "=", "RUNNING")], limit=1000,
                             raise_on_missing_output=False)
        if any(t.name.endswith(".run_episodes") for t in running):
            break
        time.sleep(0.5)
    where: dict[str, list[str]] = {}
    for a in list_actors(address=dashboard, detail=True, limit=1000, raise_on_missing_output=False):
        if a.class_name != "JobSupervisor" and a.state == "ALIVE":
            where.setdefault(a.class_name, []).append(a.node_id)
    return where
