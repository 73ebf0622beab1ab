"""The driver: builds the actors on Ray and runs rounds.

The environment (`env.name`, behind `ouroboros/envs/base.py`) provides the tasks, the agents
that run episodes, the judge that scores them, and how pairs, turn rewards and metrics are
formed: `tasks` (one reply, hidden tests decided on the host) or `experiment` (experiment
cycles on research questions drawn per round). The loop never branches on which.

Round 0 evaluates the base policy (weights version 0) on the held-out tasks.
Each later round: agents roll out the current policy on sampled train tasks,
the judge scores the trajectories, the recorder stores them and forms the
learner's batch (preference pairs, or policy turns), the learner trains on it and
publishes a new weights version, the recorder writes its checkpoint, every generator
loads it, and the agents evaluate it on the held-out tasks. With `run.async`, the
rollouts of round r+1 start before the learner trains on round r, on the version
the generators hold, so rollout and learning overlap; each sample records its
staleness.

The driver holds actor handles, ObjectRefs and small metric dicts only:
completions, scores, pairs and weights move between actors by reference.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field

from ouroboros import faults, placement
from ouroboros.config import Config, ConfigError
from ouroboros.store.layout import new_run_id
from ouroboros.weights_group import Broadcaster


class Reporter:
    """Progress callbacks; the CLI draws them with rich, tests ignore them."""

    def phase(self, round_: int, name: str, total: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def round_done(self, row: dict) -> None: ...
    def message(self, text: str) -> None: ...


@dataclass
class Actors:
    generators: list
    runners: list
    agents: list
    judge: object
    learner: object
    recorder: object
    all: list = field(default_factory=list)
    live: object = None  # LiveWeights: the version a restarted generator loads


def ray_resources(cfg: Config) -> tuple[int, dict]:
    """Logical CPUs and custom resources a local Ray must advertise for this config's actors."""
    from ouroboros.envs import environment

    # generators + learner + what the environment's own actors (judges) reserve
    needed = cfg.generator.num_cpus * cfg.generator.count + 1 + environment(cfg).actor_cpus()
    return max(os.cpu_count() or 1, math.ceil(needed), cfg.ray.num_cpus or 0), {"sandbox": cfg.sandbox.runners}


def init_ray(cfg: Config, runs: int = 1) -> bool:
    """Start or join Ray for this config; False if this process was in Ray already (a Tune trial,
    a test), whose Ray the run then leaves up when it ends. `runs`: how many such runs a local
    Ray must have room for at once (a sweep's parallel trials)."""
    import ray

    if ray.is_initialized():
        return False
    # A job sent with `ray job submit` runs with RAY_ADDRESS set: it joins that cluster.
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=False)
        return True
    num_cpus, resources = ray_resources(cfg)
    # "local": a Ray of our own, always. Without it Ray joins whatever cluster `ray start` last
    # started on this host (another user's, another test's), with other resources.
    ray.init(address="local", num_cpus=num_cpus * runs, resources={k: v * runs for k, v in resources.items()},
             include_dashboard=False, log_to_driver=False, configure_logging=False,
             _system_config=task_events(cfg.ray.task_events_kept))
    return True


def task_events(kept: int) -> dict:
    """Ray's system config for `ray.task_events_kept`: none reported at all (which also spares each
    call the reporting), or the GCS's store of them capped."""
    if kept == 0:
        return {"task_events_report_interval_ms": 0}
    return {"task_events_max_num_task_in_gcs": kept}


def sandbox_runners(cfg: Config, run_id: str, sessions: bool = False) -> list:
    """`sandbox.runners` SandboxRunner actors, each running up to `sandbox.concurrency` execs at
    once (threads: a runner mostly waits on its sandboxed children). `sessions`: they serve
    experiment sessions, so they start their spare sandboxes at once."""
    from ouroboros.actors.sandbox_runner import SandboxRunner

    # A docker runner that passes GPUs into its containers holds them in Ray's accounting too.
    runner_gpus = max(cfg.sandbox.gpus, 0) if cfg.sandbox.backend == "docker" else 0
    # A few threads beyond the execs, so opening and closing sessions never queue behind them
    # (the runner itself holds execs to `sandbox.concurrency`).
    runner_cls = placement.actor(SandboxRunner, "runner", num_cpus=0, num_gpus=runner_gpus, resources={"sandbox": 1},
                                 max_concurrency=cfg.sandbox.concurrency + 4)
    return [runner_cls.remote(cfg.sandbox, run_id, sessions) for _ in range(cfg.sandbox.runners)]


def build_actors(cfg: Config, run_dir: str, run_id: str, task_set: list | None = None,
                 reporter: Reporter | None = None, env=None, learns: bool = True) -> Actors:
    """The run's actors. `task_set`: the environment's tasks (the judge scores against them).
    `learns`: False for a run that only evaluates (no learning round to do), which then has no
    learner actor: building one (torch, PEFT and TRL imported, the model loaded) is seconds of CPU.
    A user's set (`env.tasks_file`, `env.goals_file`) has its references run on the runners
    first, before the recorder and the models exist, so a refused set leaves no run behind and
    loads no model; the bundled sets are checked by CI (tests/test_task_dataset.py,
    tests/test_experiment_env.py), not again here."""
    import ray

    from ouroboros.actors.generator import generator_actor
    from ouroboros.actors.learner import Learner
    from ouroboros.actors.live_weights import LiveWeights
    from ouroboros.actors.recorder import Recorder
    from ouroboros.envs import environment

    env = env or environment(cfg)
    # Resource needs sit here, next to where each actor is made; where each kind runs on a
    # cluster is ouroboros/placement.py's.
    placement.configure(cfg.ray.max_restarts)
    runners = sandbox_runners(cfg, run_id, sessions=env.sandbox_sessions) if env.uses_sandbox else []
    if env.uses_user_file():
        # Before any model is loaded: a refused file costs its references' runs, not a model load.
        ray.get([r.owner.remote() for r in runners])  # a missing sandbox says so first
        env.check_user_tasks(task_set or [], runners, reporter or Reporter())
    live = placement.actor(LiveWeights, "live-weights", num_cpus=0, max_concurrency=8).remote()
    gen_cls = generator_actor(cfg)
    learner_cls = placement.actor(Learner, "learner", num_cpus=1, num_gpus=cfg.learner.num_gpus)
    generators = [gen_cls.remote(cfg, live) for _ in range(cfg.generator.count)]
    agents = env.make_agents(run_id, run_dir, generators, runners)
    judge = env.make_judge(task_set, run_id, runners, run_dir=run_dir)
    learner = learner_cls.remote(cfg) if learns else None
    recorder = placement.actor(Recorder, "recorder", num_cpus=0).remote(
        run_dir, run_id, cfg.run.name, cfg.model_dump(by_alias=True), env, cfg.learner.algorithm)
    everything = [*generators, *runners, *agents, judge, recorder, live] + ([learner] if learns else [])
    # Surface construction errors (a missing model, a missing bwrap) now, with their own message.
    ray.get([g.weights_version.remote() for g in generators] + [r.owner.remote() for r in runners]
            + ([learner.weights_version.remote()] if learns else []))
    return Actors(generators, runners, agents, judge, learner, recorder, everything, live)


@dataclass
class Rollout:
    """A phase's episodes in flight: the refs of each chunk's trajectories and scores."""

    round: int
    phase: str
    traj_refs: list
    score_refs: list
    sizes: dict
    started: float


class Loop:
    def __init__(self, cfg: Config, reporter: Reporter | None = None, resume=None) -> None:
        """`resume`: a ResumePoint (ouroboros/resume.py): carry that run on from its last finished round."""
        from ouroboros.envs import environment

        self.cfg = cfg
        self.reporter = reporter or Reporter()
        self.resume = resume
        self.run_id = resume.run_id if resume is not None else new_run_id(cfg.run.name)
        self.env = environment(cfg)
        # A user's task set is read (and its tests compiled) here, before Ray starts.
        self.tasks = self.env.load_tasks()
        self.train_tasks = [t for t in self.tasks if t.split == "train"]
        heldout = [t for t in self.tasks if t.split == "heldout"]
        self.heldout = heldout[: cfg.env.heldout_tasks] if cfg.env.heldout_tasks else heldout
        self.rows: list[dict] = list(resume.rounds) if resume is not None else []
        self._broadcaster = Broadcaster(cfg.generator.weights_transport, cfg.generator.sync_timeout_s)

    # -- phases ------------------------------------------------------------------
    def _start(self, a: Actors, round_: int, phase: str, tasks, samples: int, temperature: float) -> Rollout:
        """Start rolling out `tasks` over the agents in chunks, and scoring each chunk as it ends."""
        cfg = self.cfg
        n_chunks = max(1, min(len(tasks), self.env.chunks(len(a.agents), len(a.generators))))
        chunks = [tasks[i::n_chunks] for i in range(n_chunks)]
        traj_refs = [
            a.agents[i % len(a.agents)].run_episodes.remote(
                chunk, samples, round_, temperature, cfg.generator.top_p, cfg.run.seed * 1000 + round_ * 10 + i)
            for i, chunk in enumerate(chunks)
        ]
        score_refs = [a.judge.score.remote(ref) for ref in traj_refs]
        sizes = {ref: len(chunk) * samples for ref, chunk in zip(score_refs, chunks)}
        return Rollout(round_, phase, traj_refs, score_refs, sizes, time.monotonic())

    def _finish(self, a: Actors, r: Rollout):
        """Wait for a rollout's scores, have the recorder store it; returns (metrics, batch_ref)."""
        import ray

        self.reporter.phase(r.round, r.phase, sum(r.sizes.values()))
        pending = list(r.score_refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            self.reporter.advance(r.sizes[done[0]])
        metrics_ref, batch_ref = a.recorder.record.options(num_returns=2).remote(
            r.round, r.phase, r.traj_refs, r.score_refs, r.phase == "train")
        return ray.get(metrics_ref), batch_ref

    def _train_tasks(self, round_: int) -> list:
        rng = random.Random(self.cfg.run.seed * 7919 + round_)
        return rng.sample(self.train_tasks, min(self.cfg.env.train_tasks_per_round, len(self.train_tasks)))

    def _start_train(self, a: Actors, round_: int) -> Rollout:
        import ray

        cfg = self.cfg
        # The environment may swap some for replayed hard cases or curriculum prompts (in the
        # recorder, which has seen every scored round).
        tasks = ray.get(a.recorder.next_tasks.remote(round_, self._train_tasks(round_)))
        return self._start(a, round_, "train", tasks, cfg.env.samples_per_task, cfg.generator.temperature)

    def _broadcast(self, a: Actors, weights, row: dict) -> int:
        """Make `weights` live on every generator; time it against one in-memory copy of the tensors."""
        import ray

        t = time.monotonic()
        self.reporter.phase(row["round"], "broadcast", len(a.generators))
        # Each generator bounds its own load (generator.sync_timeout_s); this bounds a generator
        # that does not answer at all, so a stuck sync is an error, never a hang.
        limit = self._broadcaster.limit_s()
        # Set first: a generator restarted during or after this broadcast loads this version.
        ray.get(a.live.set.remote(weights))
        try:
            pending = self._broadcaster.launch(a.learner, a.generators, weights)
            faults.point(row["round"], "broadcast")
            loads, send_s = self._broadcaster.collect(pending, len(a.generators), limit)
        except ray.exceptions.GetTimeoutError:
            from ouroboros.backends import BackendError

            raise BackendError(f"weights v{weights.version} were not live on every generator after {limit:g} s "
                               "(from generator.sync_timeout_s): a generator is stuck; see its log") from None
        broadcast_s = time.monotonic() - t
        self.reporter.advance(len(a.generators))
        copy_s = ray.get(a.learner.copy_benchmark.remote())
        ray.get(a.recorder.record_weights.remote(weights))
        row["seconds"]["broadcast"] = broadcast_s
        row["broadcast"] = {"bytes": weights.num_bytes, "generators": len(loads),
                            "load_s_max": max(x["total_s"] for x in loads), "wall_s": broadcast_s,
                            "load_s": [round(x["total_s"], 4) for x in loads],
                            "one_copy_s": copy_s, "transport": self._broadcaster.transport}
        if self._broadcaster.transport != "store":
            row["broadcast"]["send_s"] = send_s
            row["broadcast"]["fallbacks"] = sum(1 for x in loads if x.get("fallback"))
        return weights.version

    def _learn(self, a: Actors, round_: int, batch_ref, row: dict, version: int) -> int:
        """Train on a round's batch; publish, checkpoint and broadcast a new version if it learned."""
        import ray

        t = time.monotonic()
        self.reporter.phase(round_, "learn", 1)
        learn_ref, rows_ref = a.learner.train.options(num_returns=2).remote(batch_ref)
        faults.point(round_, "learn")
        learn = ray.get(learn_ref)
        per_step = learn.pop("per_step", None) or []
        if per_step:
            ray.get(a.recorder.record_learner_steps.remote(round_, per_step))
        row["learner"] = learn
        row["loss"] = learn.get("loss")
        row["dpo_loss"] = learn.get("dpo_loss")
        for key in ("staleness_mean", "staleness_max", "reward_bound_hit_rate", "generator_learner_kl", "kl_ref"):
            if key in learn:
                row[key] = learn[key]
        if self.cfg.learner.algorithm != "dpo":
            row["learner_turns"] = ray.get(a.recorder.record_learning.remote(round_, rows_ref))
        self.reporter.advance(1)
        if not learn.get("steps"):
            # Nothing learned (every reward tied, or the batch was refused): no new version.
            row["seconds"]["learn"] = time.monotonic() - t
            self.reporter.message(f"round {round_}: {learn.get('nothing_to_learn', 'nothing to learn')}; "
                                  f"keeping weights v{version}")
            return version
        weights = ray.get(a.learner.publish.remote())  # small: version, checksum and a ref
        ray.get(a.recorder.write_checkpoint.remote(weights.version, a.learner.checkpoint.remote()))
        row["seconds"]["learn"] = time.monotonic() - t
        return self._broadcast(a, weights, row)

    def _restore(self, a: Actors) -> int:
        """A resumed run: drop the interrupted round, bring the learner back from its checkpoint,
        and make that version live on every generator. Returns the version."""
        import ray

        point = self.resume
        last = point.next_round - 1
        ray.get(a.recorder.rewind.remote(last, point.version))
        if not point.version or a.learner is None:  # nothing learned yet, or nothing left to learn
            return point.version
        restored = ray.get(a.learner.restore.remote(ray.put(point.checkpoint)))
        weights = ray.get(a.learner.publish.remote(new_version=False))
        version = self._broadcast(a, weights, {"round": point.next_round, "seconds": {}})
        self.reporter.message(f"resuming run {self.run_id} at round {point.next_round} on weights v{restored}")
        return version

    def _evaluate(self, a: Actors, round_: int) -> dict:
        metrics, _ = self._finish(a, self._start(a, round_, "eval", self.heldout, self.cfg.env.heldout_samples,
                                                 self.cfg.generator.eval_temperature))
        return metrics

    # -- the run -------------------------------------------------------------------
    def run(self, rounds: int | None = None, run_dir: str | None = None) -> list[dict]:
        import ray

        cfg = self.cfg
        rounds = cfg.run.rounds if rounds is None else rounds
        run_dir = run_dir or cfg.run.out
        check_trainable(cfg, rounds)
        check_backend_installed(cfg)
        self.env.preflight()
        preflight_secrets(cfg)
        if rounds > 0 and not self.train_tasks:
            raise ConfigError(f"{self.env.source()} has nothing of split \"train\", so there is nothing to train on: "
                              "add some, or run with --rounds 0")
        own_ray = init_ray(cfg)
        a = None
        status = "failed"
        overlap = cfg.run.async_
        try:
            self.reporter.message(f"starting actors (run {self.run_id})")
            first = self.resume.next_round if self.resume is not None else 0
            a = build_actors(cfg, run_dir, self.run_id, self.tasks, self.reporter, self.env, learns=rounds >= max(first, 1))
            version = self._restore(a) if self.resume is not None else 0
            if first > rounds:
                self.reporter.message(f"run {self.run_id} has finished all {rounds} round(s) already: "
                                      "pass --rounds N to carry it on")
            ahead: Rollout | None = None  # run.async: the next round's rollout, already running
            run_started = time.monotonic()
            for round_ in range(first, rounds + 1):
                started = time.monotonic()
                budget = cfg.run.time_budget_s
                if round_ > first and budget is not None and started - run_started > budget:
                    self.reporter.message(f"run.time_budget_s ({budget:g} s) spent after round {round_ - 1}; "
                                          "stopping with every finished round kept")
                    break
                ray.get(a.recorder.start_round.remote(round_, version))
                row = {"round": round_, "train_reward_mean": None, "train_valid_rate": None, "train_samples": 0,
                       "pairs": 0, "loss": None, "dpo_loss": None, "seconds": {}}
                tokens = 0
                if round_ > 0:
                    t = time.monotonic()
                    rollout = ahead or self._start_train(a, round_)
                    faults.point(round_, "rollout")
                    train, batch_ref = self._finish(a, rollout)
                    row["seconds"]["rollout"] = time.monotonic() - t
                    row["seconds"]["rollout_overlapped"] = t - rollout.started
                    row.update(train_reward_mean=train["reward_mean"], train_valid_rate=train["valid_rate"],
                               train_pass_rate=train["pass_rate"], train_samples=train["samples"],
                               pairs=train["pairs"], train_weights_versions=train["weights_versions"])
                    # An environment's own measures (survival time, harm rates, ...), prefixed by phase.
                    row.update({f"train_{k}": v for k, v in train.get("env", {}).items()})
                    tokens += train["tokens"]
                    # The next round's rollout starts now, on the version the generators hold,
                    # and runs while this round learns, broadcasts and evaluates.
                    ahead = self._start_train(a, round_ + 1) if overlap and round_ < rounds else None
                    version = self._learn(a, round_, batch_ref, row, version)

                t = time.monotonic()
                ev = self._evaluate(a, round_)
                row["seconds"]["eval"] = time.monotonic() - t
                tokens += ev["tokens"]
                row.update(weights_version=version, heldout_valid_rate=ev["valid_rate"],
                           heldout_pass_rate=ev["pass_rate"], heldout_reward_mean=ev["reward_mean"],
                           heldout_reward_ci95=ev["reward_ci95"], heldout_valid_ci95=ev["valid_ci95"],
                           heldout_pass_ci95=ev["pass_ci95"], heldout_samples=ev["samples"],
                           eval_weights_versions=ev["weights_versions"], tokens_generated=tokens)
                row.update({f"heldout_{k}": v for k, v in ev.get("env", {}).items()})
                row["seconds"]["total"] = time.monotonic() - started
                ray.get(a.recorder.finish_round.remote(row))
                self.rows.append(row)
                self.reporter.round_done(row)
                faults.point(round_, "between")
            status = "done"
            return self.rows
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            if a is not None:
                self.env.before_shutdown(a.agents, status)
                try:
                    ray.get(a.recorder.close.remote(status), timeout=30)
                except Exception:  # the store keeps every finished round whatever happens here
                    pass
            stop_actors(a.all if a is not None else [], shutdown_ray=own_ray)
            if a is not None:
                self.env.after_shutdown(run_dir, self.run_id)


def check_trainable(cfg: Config, rounds: int) -> None:
    """Learning rounds broadcast each new version to the generators: refuse, before anything
    starts, a backend that cannot load weights (an API model), unless the run only evaluates."""
    from ouroboros.backends import backend_class

    if rounds > 0 and not backend_class(cfg.generator.backend).accepts_weights:
        raise ConfigError(
            f"generator.backend {cfg.generator.backend!r} cannot load trained weights, so `ouroboros run` cannot "
            "train it: pass --rounds 0 to only evaluate it on the held-out tasks, or run experiment cycles with "
            "`ouroboros experiment CONFIG`")


def check_backend_installed(cfg: Config) -> None:
    """A vllm generator on a host without vLLM is one line now, before Ray and the actors start."""
    import importlib.util

    if cfg.generator.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        from ouroboros.backends.vllm import INSTALL_HINT

        raise ConfigError(f"generator.backend is 'vllm' but vLLM is not installed here: {INSTALL_HINT}")


def preflight_secrets(cfg: Config) -> None:
    """A credential the config names but this host lacks is one clear line now, not an actor
    that dies at start-up. The values read here are dropped at once."""
    from ouroboros.secrets import resolve
    from ouroboros.store.trackers import TrackerError, check

    resolve(cfg.sandbox.env_from)
    try:
        check(cfg.tracking.model_dump())
    except TrackerError as exc:
        raise ConfigError(str(exc)) from None


def stop_actors(handles: list, shutdown_ray: bool = True) -> None:
    """Kill `handles`, then shut Ray down (unless this process was in Ray before the run). A dead
    runner's sandboxes die with it (bwrap --die-with-parent) or are removed by its janitor."""
    import ray

    for handle in handles:
        try:
            ray.kill(handle)
        except Exception:
            pass
    placement.release_pinned()
    if shutdown_ray and ray.is_initialized():
        left = _local_ray_descendants()
        ray.shutdown()
        _kill_survivors(left)


def _local_ray_descendants() -> list:
    """The processes under the raylet this driver started (none when it joined a cluster)."""
    try:
        import psutil
        import ray
        from ray._private import ray_constants

        node = ray._private.worker._global_node
        raylets = (node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET) or []) if node is not None else []
        out = []
        for r in raylets:
            if r.process.poll() is not None:
                continue  # it ended already: its pid may name another process by now
            raylet = psutil.Process(r.process.pid)
            if "raylet" in raylet.name():
                out += raylet.children(recursive=True)
        return out
    except Exception:  # noqa: BLE001 - Ray's internals moved, or the raylet is gone: nothing to collect
        return []


def _kill_survivors(processes: list, grace_s: float = 3.0) -> None:
    """Ray's agents (dashboard, runtime env) outlive a shut-down raylet by a minute or more when
    they cannot report its end to the GCS, which is gone too: kill what is still there."""
    import psutil

    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
