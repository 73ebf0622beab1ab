"""The experiment driver (seed 000): many experiment cycles in parallel as Ray actors.

`ExperimentDriver.run(cycles, parallel, interval_s, forever, wait_first)` starts the shared
pools (Generators, SandboxRunners) and `parallel` ExperimentAgent actors, and keeps every agent
busy: a slot starts its next cycle as soon as its last one ends, or `interval_s` after it
started when an interval is set (the seed's schedule). The driver holds handles and small
result dicts only; agents write the store and git themselves.

Ctrl-C (or any error) kills the agents and runners. Their janitors remove every sandbox, and
experiments whose agent died mid-cycle are marked `failed` (`ExperimentStore.fail_orphans`).
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Callable

from ouroboros.config import Config


class ExperimentDriver:
    def __init__(self, cfg: Config, run_dir: str, on_result: Callable[[dict], None] | None = None) -> None:
        from ouroboros.envs.experiment.prompt import check_template

        if cfg.experiment.template:
            check_template(cfg.experiment.template)  # a bad template is a config error, before Ray starts
        self.cfg = cfg
        self.run_dir = str(run_dir)
        self.run_id = f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.on_result = on_result or (lambda row: None)
        self.results: list[dict] = []
        self.handles: list = []

    def _build(self, parallel: int):
        import ray

        from ouroboros.actors.experiment_agent import ExperimentAgent
        from ouroboros.actors.generator import Generator
        from ouroboros.actors.sandbox_runner import SandboxRunner

        cfg = self.cfg
        gen_cls = ray.remote(num_cpus=cfg.generator.num_cpus, num_gpus=cfg.generator.num_gpus)(Generator)
        runner_gpus = max(cfg.sandbox.gpus, 0) if cfg.sandbox.backend == "docker" else 0
        runner_cls = ray.remote(num_cpus=0, num_gpus=runner_gpus, resources={"sandbox": 1})(SandboxRunner)
        generators = [gen_cls.remote(cfg) for _ in range(cfg.generator.count)]
        runners = [runner_cls.remote(cfg.sandbox, self.run_id) for _ in range(cfg.sandbox.runners)]
        agent_cls = ray.remote(num_cpus=0)(ExperimentAgent)
        agents = [agent_cls.remote(cfg, self.run_id, self.run_dir, generators, runners, slot) for slot in range(parallel)]
        self.handles = [*agents, *runners, *generators]
        # Surface construction errors (a missing model, engine or git) now, with their own message.
        ray.get([g.weights_version.remote() for g in generators] + [r.owner.remote() for r in runners]
                + [a.__ray_ready__.remote() for a in agents])
        return agents

    def run(self, cycles: int | None, parallel: int, interval_s: float = 0.0, forever: bool = False,
            wait_first: bool = False) -> list[dict]:
        import ray

        from ouroboros.loop import init_ray, stop_actors
        from ouroboros.sandbox import reaper
        from ouroboros.store.db import RunDB
        from ouroboros.store.experiments import ExperimentStore

        Path(self.run_dir).mkdir(parents=True, exist_ok=True)
        db = RunDB(Path(self.run_dir) / "ouroboros.db")
        db.start_run(self.run_id, self.cfg.run.name, self.cfg.model_dump())
        store = ExperimentStore(Path(self.run_dir) / "ouroboros.db")
        total = None if forever else max(1, cycles or 1)
        status = "failed"
        init_ray(self.cfg)
        try:
            agents = self._build(parallel)
            started = 0
            running: dict = {}  # ref -> (agent, start time)
            next_start = {i: time.monotonic() + (interval_s if wait_first else 0.0) for i in range(len(agents))}
            idle = list(range(len(agents)))
            while True:
                now = time.monotonic()
                for slot in list(idle):
                    if total is not None and started >= total:
                        break
                    if next_start[slot] <= now:
                        idle.remove(slot)
                        running[agents[slot].run_cycle.remote(started)] = slot
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
                    slot = running.pop(ref)
                    idle.append(slot)
                    try:
                        row = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        row = {"experiment_id": None, "status": "failed", "end_reason": f"agent died: {exc}"[:300],
                               "actions": 0}
                    self.results.append(row)
                    self.on_result(row)
            status = "finished"
            return self.results
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            stop_actors(self.handles)
            # Agents killed mid-cycle left `running` rows: their processes are gone now.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                rows = store.query("SELECT owner FROM experiments WHERE status='running'")
                if not any(reaper.is_alive(owner or "") for (owner,) in rows):
                    break
                time.sleep(0.2)
            store.fail_orphans(reaper.is_alive)
            db.finish_run(self.run_id, status)
            store.close()
            db.close()
