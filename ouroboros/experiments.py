"""The experiment driver (seed 000): many experiment cycles in parallel as Ray actors.

`ExperimentDriver.run(cycles, parallel, interval_s, forever, wait_first)` starts the shared
pools (Generators, SandboxRunners) and ExperimentAgent actors for `parallel` slots (each agent
carries `experiment.cycles_per_agent` slots), and keeps every slot busy: a slot starts its next cycle as soon as its last one ends, or `interval_s` after it
started when an interval is set (the seed's schedule). The driver holds handles and small
result dicts only; agents write the store and git themselves.

An agent that dies mid-cycle (killed, or its process lost) costs the cycles it was running:
they are marked `failed`, the sandbox sessions they held are closed, and a new agent takes its
slots, up to `ray.max_restarts` times in a run. Generators and runners are restarted by Ray.

Ctrl-C (or any error) kills the agents and runners. Their janitors remove every sandbox, and
experiments whose agent died mid-cycle are marked `failed` (`ExperimentStore.fail_orphans`).
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from ouroboros import placement
from ouroboros.config import Config
from ouroboros.store.layout import RunPaths, new_run_id

log = logging.getLogger(__name__)


class ExperimentDriver:
    def __init__(self, cfg: Config, run_dir: str, on_result: Callable[[dict], None] | None = None) -> None:
        from ouroboros.envs.experiment.prompt import check_template

        if cfg.experiment.template:
            check_template(cfg.experiment.template)  # a bad template is a config error, before Ray starts
        self.cfg = cfg
        self.run_dir = str(run_dir)
        self.run_id = new_run_id(cfg.run.name)
        self.on_result = on_result or (lambda row: None)
        self.results: list[dict] = []
        self.handles: list = []
        self.agents: list = []

    def _build(self, parallel: int) -> None:
        """Start the pools and the agents (`experiment.cycles_per_agent` slots each)."""
        import math

        import ray

        from ouroboros.actors.experiment_agent import ExperimentAgent
        from ouroboros.actors.generator import generator_actor
        from ouroboros.loop import sandbox_runners

        cfg = self.cfg
        placement.configure(cfg.ray.max_restarts)
        gen_cls = generator_actor(cfg)
        generators = [gen_cls.remote(cfg) for _ in range(cfg.generator.count)]
        runners = sandbox_runners(cfg, self.run_id, sessions=True)
        per_agent = cfg.experiment.cycles_per_agent
        # One thread more than its slots, so `flush` gets through while cycles run.
        agent_cls = placement.actor(ExperimentAgent, "run-dir-writer", num_cpus=0, max_concurrency=per_agent + 1)
        self._new_agent = lambda n: agent_cls.remote(cfg, self.run_id, self.run_dir, generators, runners, n * per_agent)
        self.per_agent, self.runners = per_agent, runners
        agents = [self._new_agent(n) for n in range(math.ceil(parallel / per_agent))]
        self.handles = [*agents, *runners, *generators]
        self.agents = agents
        # Surface construction errors (a missing model, engine or git) now, with their own message.
        ray.get([g.weights_version.remote() for g in generators] + [r.owner.remote() for r in runners])
        self.owners = ray.get([a.owner_token.remote() for a in agents])
        capacity = cfg.sandbox.runners * cfg.sandbox.concurrency
        if parallel > capacity:
            log.warning("%d parallel cycles share %d sandbox slots (sandbox.runners x sandbox.concurrency): "
                        "their execs will wait for each other", parallel, capacity)

    def _replace_agent(self, k: int, exc: Exception, store) -> list[int]:
        """Agent `k` died (killed, or its process lost): what its cycles were doing ends as failed,
        the sandbox sessions they held are closed, and a new agent takes its slots. Its experiment
        rows and git commits are its own writes, so Ray does not restart it (placement.py); this
        is the driver doing it, once the dead agent's writes are settled. Returns the ids of the
        experiments it left running."""
        import ray

        from ouroboros.sandbox import reaper

        self.replaced += 1
        if self.replaced > self.cfg.ray.max_restarts:
            raise exc  # past the run's restart budget: stop, and the CLI says which actor died
        owner = self.owners[k]
        # An agent Ray cannot reach is not necessarily dead: make sure it is, before its rows are
        # settled and another agent takes its slots (two agents on one slot would write twice).
        try:
            ray.kill(self.agents[k], no_restart=True)
        except Exception:  # gone already
            pass
        deadline = time.monotonic() + 30
        while reaper.is_alive(owner) and time.monotonic() < deadline:  # its process takes a moment to go
            time.sleep(0.1)
        if reaper.is_alive(owner):
            log.error("experiment agent %d (process %s) is still alive after it was killed; stopping", k, owner)
            raise exc
        lost = [eid for (eid,) in store.query(
            "SELECT id FROM experiments WHERE status='running' AND owner=? ORDER BY id", (owner,))]
        reason = "its experiment agent died mid-cycle (the process was killed or lost)"
        for eid in lost:
            store.finish(eid, "failed", reason, {}, {})
        closed = 0
        try:  # runners being restarted themselves have lost these sessions anyway
            closed = sum(ray.get([r.close_sessions_of.remote(owner) for r in self.runners], timeout=60))
        except ray.exceptions.RayError as err:
            log.warning("could not close every session of the dead agent (%s); its runners' janitors will", err)
        agent = self._new_agent(k)
        self.owners[k] = ray.get(agent.owner_token.remote())
        self.handles[self.handles.index(self.agents[k])] = agent
        self.agents[k] = agent
        log.warning("experiment agent %d died (%s); %d running experiment(s) marked failed, %d sandbox "
                    "session(s) closed, a new agent takes its slots (%d of %d replacements, ray.max_restarts)", k,
                    type(exc).__name__, len(lost), closed, self.replaced, self.cfg.ray.max_restarts)
        return lost

    def run(self, cycles: int | None, parallel: int, interval_s: float = 0.0, forever: bool = False,
            wait_first: bool = False) -> list[dict]:
        import ray

        from ouroboros.loop import init_ray, preflight_secrets, stop_actors
        from ouroboros.store.db import RunDB
        from ouroboros.store.experiments import ExperimentStore

        preflight_secrets(self.cfg)
        paths = RunPaths(self.run_dir, self.run_id).make()  # beside earlier runs, never over them
        db = RunDB(paths.db)
        db.start_run(self.run_id, self.cfg.run.name, self.cfg.model_dump())
        store = ExperimentStore(paths.db)
        total = None if forever else max(1, cycles or 1)
        status = "failed"
        init_ray(self.cfg)
        try:
            self._build(parallel)
            self.replaced = 0
            slots = list(range(parallel))
            started = 0
            running: dict = {}  # ref -> (slot, the agent that runs it)
            next_start = {i: time.monotonic() + (interval_s if wait_first else 0.0) for i in slots}
            idle = list(slots)
            lost_ids: dict = {}  # dead agent handle -> ids of the experiments it left running
            while True:
                now = time.monotonic()
                for slot in list(idle):
                    if total is not None and started >= total:
                        break
                    if next_start[slot] <= now:
                        idle.remove(slot)
                        agent = self.agents[slot // self.per_agent]
                        running[agent.run_cycle.remote(started, slot)] = (slot, agent)
                        next_start[slot] = now + interval_s
                        started += 1
                if not running and (total is not None and started >= total):
                    break
                wait_s = 1.0
                if idle and (total is None or started < total):
                    wait_s = max(0.05, min(next_start[s] for s in idle) - time.monotonic())
                if not running:
                    time.sleep(min(wait_s, 5.0))
                    continue
                done, _ = ray.wait(list(running), num_returns=1, timeout=min(wait_s, 5.0))
                for ref in done:
                    slot, agent = running.pop(ref)
                    idle.append(slot)
                    try:
                        row = ray.get(ref)
                    except ray.exceptions.RayActorError as exc:
                        # A RayTaskError here is the live agent's cycle raising: a generator
                        # or runner past its restarts, which would fail every later cycle
                        # too. Stop; the CLI says which. Otherwise the agent itself died.
                        if isinstance(exc, ray.exceptions.RayTaskError):
                            raise
                        if agent not in lost_ids:
                            lost_ids[agent] = self._replace_agent(self.agents.index(agent), exc, store)
                        ids = lost_ids[agent]
                        row = {"experiment_id": ids.pop(0) if ids else None, "status": "failed", "actions": 0,
                               "end_reason": "its experiment agent died mid-cycle"}
                    self.results.append(row)
                    self.on_result(row)
            status = "finished"
            return self.results
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            flush_commits(self.agents, status)
            stop_actors(self.handles)
            close_experiments(store, paths.experiments)
            db.finish_run(self.run_id, status)
            store.close()
            db.close()


def flush_commits(agents: list, status: str) -> None:
    """Let the agents' committers finish: every finished experiment gets its git commit."""
    import ray

    if not agents:
        return
    timeout = 120.0 if status in ("finished", "done") else 20.0
    try:
        done = ray.get([a.flush.remote(timeout) for a in agents], timeout=timeout + 10)
        if not all(done):
            log.warning("some experiment commits were still queued after %.0f s", timeout)
    except (ray.exceptions.RayError, KeyboardInterrupt) as exc:
        log.warning("could not wait for the experiment commits (%s); rows may lack git_commit", exc)


def close_experiments(store, repo_path) -> None:
    """After the agents are stopped: mark the experiments they left `running` failed, and bring
    the experiments repository's index up to date (commits bypass it) so `git status` is clean."""
    from ouroboros.sandbox import reaper
    from ouroboros.store.git_repo import ExperimentRepo, GitError

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # killed agents' processes take a moment to be gone
        rows = store.query("SELECT owner FROM experiments WHERE status='running'")
        if not any(reaper.is_alive(owner or "") for (owner,) in rows):
            break
        time.sleep(0.2)
    store.fail_orphans(reaper.is_alive)
    path = repo_path
    if not (path / ".git").is_dir():
        return
    try:
        ExperimentRepo(path).sync_index()
    except (GitError, OSError) as exc:
        log.warning("could not refresh the index of %s (%s); the commits are intact", path, exc)
