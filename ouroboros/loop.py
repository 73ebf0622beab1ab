"""The driver: builds the actors on Ray and runs rounds.

The environment (`env.name`) picks the episodes: `tasks` (one reply, hidden tests decided on
the host; the bundled task set or `env.tasks_file`) or `experiment` (experiment cycles on
research questions drawn per round, judged on their execution and on whether a run computed the
answer they conclude; pairs come from where two cycles of one goal first differ).

Round 0 evaluates the base policy (weights version 0) on the held-out tasks.
Each later round: agents roll out the current policy on sampled train tasks,
the judge scores the trajectories, the recorder stores them and forms
preference pairs, the learner trains on those pairs and publishes a new
weights version, every generator loads it, and the agents evaluate it on the
held-out tasks.

The driver holds actor handles, ObjectRefs and small metric dicts only:
completions, scores, pairs and weights move between actors by reference.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field

from ouroboros.config import Config, ConfigError
from ouroboros.store.layout import RunPaths, new_run_id


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


def ray_resources(cfg: Config) -> tuple[int, dict]:
    """Logical CPUs and custom resources a local Ray must advertise for this config's actors."""
    needed = cfg.generator.num_cpus * cfg.generator.count + 1  # generators + learner
    return max(os.cpu_count() or 1, math.ceil(needed), cfg.ray.num_cpus or 0), {"sandbox": cfg.sandbox.runners}


def init_ray(cfg: Config) -> None:
    import ray

    if ray.is_initialized():
        return
    if cfg.ray.address:
        ray.init(address=cfg.ray.address, log_to_driver=False)
        return
    num_cpus, resources = ray_resources(cfg)
    ray.init(num_cpus=num_cpus, resources=resources, include_dashboard=False, log_to_driver=False,
             configure_logging=False)


def sandbox_runners(cfg: Config, run_id: str, sessions: bool = False) -> list:
    """`sandbox.runners` SandboxRunner actors, each running up to `sandbox.concurrency` execs at
    once (threads: a runner mostly waits on its sandboxed children). `sessions`: they serve
    experiment sessions, so they start their spare sandboxes at once."""
    import ray

    from ouroboros.actors.sandbox_runner import SandboxRunner

    # A docker runner that passes GPUs into its containers holds them in Ray's accounting too.
    runner_gpus = max(cfg.sandbox.gpus, 0) if cfg.sandbox.backend == "docker" else 0
    # A few threads beyond the execs, so opening and closing sessions never queue behind them
    # (the runner itself holds execs to `sandbox.concurrency`).
    runner_cls = ray.remote(num_cpus=0, num_gpus=runner_gpus, resources={"sandbox": 1},
                            max_concurrency=cfg.sandbox.concurrency + 4)(SandboxRunner)
    return [runner_cls.remote(cfg.sandbox, run_id, sessions) for _ in range(cfg.sandbox.runners)]


def build_actors(cfg: Config, run_dir: str, run_id: str, task_set: list | None = None,
                 reporter: Reporter | None = None) -> Actors:
    """The run's actors. `task_set`: the environment's tasks (tasks: the judge counts their
    tests; experiment: the goals of every split, which the judge answers). A user's set
    (`env.tasks_file`, `env.goals_file`) has its references run on the runners first, before
    the recorder exists, so a refused set leaves no run behind; the bundled sets are checked by
    CI (tests/test_task_dataset.py, tests/test_experiment_env.py), not again here."""
    import ray

    from ouroboros.actors.generator import generator_actor
    from ouroboros.actors.learner import Learner
    from ouroboros.actors.recorder import Recorder

    # Resource needs sit here, next to where each actor is made; placement is Ray's.
    gen_cls = generator_actor(cfg)
    learner_cls = ray.remote(num_cpus=1, num_gpus=cfg.learner.num_gpus)(Learner)
    generators = [gen_cls.remote(cfg) for _ in range(cfg.generator.count)]
    experiment = cfg.env.name == "experiment"
    runners = sandbox_runners(cfg, run_id, sessions=experiment)
    if cfg.env.tasks_file or cfg.env.goals_file:
        ray.get([r.owner.remote() for r in runners])  # a missing sandbox says so first
        if experiment:
            check_goals_file(cfg, task_set or [], runners, reporter or Reporter())
        else:
            from ouroboros.envs.tasks.references import check_references

            check_references(task_set or [], runners, cfg.sandbox, f"env.tasks_file {cfg.env.tasks_file!r}")
    if experiment:
        from ouroboros.actors.experiment_agent import ExperimentAgent
        from ouroboros.actors.judge import ExperimentJudge

        # run_episodes runs its cycles on the agent's own threads; the second actor thread
        # serves `flush` while they run.
        agent_cls = ray.remote(num_cpus=0, max_concurrency=2)(ExperimentAgent)
        agents = [agent_cls.remote(cfg, run_id, run_dir, generators, runners, n * cfg.experiment.cycles_per_agent)
                  for n in range(cfg.env.agents)]
        # The judge computes each instance's answer by running the goal's reference program in
        # the sandbox, on the run's runners (scratch execs, apart from every experiment's session).
        judge = ray.remote(num_cpus=0)(ExperimentJudge).remote(cfg.judge.experiment, task_set, run_id, runners)
    else:
        from ouroboros.actors.agent import TasksAgent
        from ouroboros.actors.judge import TasksJudge

        agents = [ray.remote(num_cpus=0)(TasksAgent).remote(generators, runners, cfg.generator.max_new_tokens, cfg)
                  for _ in range(cfg.env.agents)]
        judge = ray.remote(num_cpus=0)(TasksJudge).remote(cfg.judge, task_set)
    learner = learner_cls.remote(cfg)
    recorder = ray.remote(num_cpus=0)(Recorder).remote(run_dir, run_id, cfg.run.name, cfg.model_dump())
    everything = [*generators, *runners, *agents, judge, learner, recorder]
    # Surface construction errors (a missing model, a missing bwrap) now, with their own message.
    ray.get([g.weights_version.remote() for g in generators] + [r.owner.remote() for r in runners]
            + [learner.weights_version.remote()])
    return Actors(generators, runners, agents, judge, learner, recorder, everything)


def check_goals_file(cfg: Config, goals: list, runners: list, reporter: Reporter) -> None:
    """Refuse a user's goals whose references fail, or whose answers hardly change with their
    parameters, all at once, before round 0."""
    from ouroboros.envs.experiment.goals import GoalsError
    from ouroboros.envs.experiment.references import References, check_goals

    reporter.message(f"checking the reference programs of {len(goals)} goal(s) in the sandbox")
    references = References(runners, timeout_s=cfg.judge.experiment.reference_timeout_s,
                            parallel=cfg.sandbox.runners * cfg.sandbox.concurrency)
    refused = check_goals(goals, references)
    if refused:
        raise GoalsError(f"env.goals_file {cfg.env.goals_file!r}: {len(refused)} goal(s) refused: " + "; ".join(refused))


class Loop:
    def __init__(self, cfg: Config, reporter: Reporter | None = None) -> None:
        self.cfg = cfg
        self.reporter = reporter or Reporter()
        self.run_id = new_run_id(cfg.run.name)
        if cfg.env.name == "experiment":
            from ouroboros.envs.experiment.goals import load_goals

            # A user's goals file is read now, so a malformed line stops the run before Ray starts.
            self.tasks = load_goals(path=cfg.env.goals_file)
        else:
            from ouroboros.envs.tasks import load_tasks

            # A user's task set is read and its tests compiled here, before Ray starts.
            self.tasks = load_tasks(path=cfg.env.tasks_file)
        self.train_tasks = [t for t in self.tasks if t.split == "train"]
        heldout = [t for t in self.tasks if t.split == "heldout"]
        self.heldout = heldout[: cfg.env.heldout_tasks] if cfg.env.heldout_tasks else heldout
        self.rows: list[dict] = []

    # -- phases ------------------------------------------------------------------
    def _episodes(self, a: Actors, round_: int, phase: str, tasks, samples: int, temperature: float):
        """Roll out `tasks` over the agents in chunks; returns (metrics, pairs_ref)."""
        import ray

        cfg = self.cfg
        # tasks: one chunk per generator: generation dominates a round, and a generator is fastest on
        # one large batch (sandbox execs take milliseconds, so there is little to overlap them with).
        # experiment: one chunk per agent, which runs its cycles side by side; their turns meet
        # in the generators' batches.
        width = len(a.agents) if cfg.env.name == "experiment" else min(len(a.generators), len(a.agents))
        n_chunks = max(1, min(len(tasks), width))
        chunks = [tasks[i::n_chunks] for i in range(n_chunks)]
        self.reporter.phase(round_, phase, len(tasks) * samples)
        traj_refs = [
            a.agents[i % len(a.agents)].run_episodes.remote(
                chunk, samples, round_, temperature, cfg.generator.top_p, cfg.run.seed * 1000 + round_ * 10 + i)
            for i, chunk in enumerate(chunks)
        ]
        score_refs = [a.judge.score.remote(ref) for ref in traj_refs]
        pending = list(score_refs)
        sizes = {ref: len(chunk) * samples for ref, chunk in zip(score_refs, chunks)}
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            self.reporter.advance(sizes[done[0]])
        metrics_ref, pairs_ref = a.recorder.record.options(num_returns=2).remote(
            round_, phase, traj_refs, score_refs, phase == "train")
        return ray.get(metrics_ref), pairs_ref

    def _broadcast(self, a: Actors, weights, row: dict) -> int:
        """Make `weights` live on every generator; time it against one in-memory copy of the tensors."""
        import ray

        t = time.monotonic()
        self.reporter.phase(row["round"], "broadcast", len(a.generators))
        # Each generator bounds its own load (generator.sync_timeout_s); this bounds a generator
        # that does not answer at all, so a stuck sync is an error, never a hang.
        limit = self.cfg.generator.sync_timeout_s + 60
        try:
            loads = ray.get([g.load_weights.remote(weights) for g in a.generators], timeout=limit)
        except ray.exceptions.GetTimeoutError:
            from ouroboros.backends import BackendError

            raise BackendError(f"weights v{weights.version} were not live on every generator after {limit:g} s "
                               "(generator.sync_timeout_s + 60): a generator is stuck; see its log") from None
        broadcast_s = time.monotonic() - t
        self.reporter.advance(len(a.generators))
        copy_s = ray.get(a.learner.copy_benchmark.remote())
        ray.get(a.recorder.record_weights.remote(weights))
        row["seconds"]["broadcast"] = broadcast_s
        row["broadcast"] = {"bytes": weights.num_bytes, "generators": len(loads),
                            "load_s_max": max(x["total_s"] for x in loads), "wall_s": broadcast_s,
                            "load_s": [round(x["total_s"], 4) for x in loads],
                            "one_copy_s": copy_s}
        return weights.version

    def _evaluate(self, a: Actors, round_: int) -> dict:
        metrics, _ = self._episodes(a, round_, "eval", self.heldout, 1, self.cfg.generator.eval_temperature)
        return metrics

    # -- the run -------------------------------------------------------------------
    def run(self, rounds: int | None = None, run_dir: str | None = None) -> list[dict]:
        import ray

        cfg = self.cfg
        rounds = cfg.run.rounds if rounds is None else rounds
        run_dir = run_dir or cfg.run.out
        check_trainable(cfg, rounds)
        check_backend_installed(cfg)
        preflight_secrets(cfg)
        if rounds > 0 and not self.train_tasks:
            source = f"env.goals_file {cfg.env.goals_file!r}" if cfg.env.name == "experiment" \
                else f"env.tasks_file {cfg.env.tasks_file!r}"
            raise ConfigError(f"{source} has nothing of split \"train\", so there is nothing to train on: "
                              "add some, or run with --rounds 0")
        init_ray(cfg)
        a = None
        status = "failed"
        try:
            self.reporter.message(f"starting actors (run {self.run_id})")
            a = build_actors(cfg, run_dir, self.run_id, self.tasks, self.reporter)
            version = 0
            for round_ in range(rounds + 1):
                started = time.monotonic()
                ray.get(a.recorder.start_round.remote(round_, version))
                row = {"round": round_, "train_reward_mean": None, "train_valid_rate": None, "train_samples": 0,
                       "pairs": 0, "dpo_loss": None, "seconds": {}}
                tokens = 0
                if round_ > 0:
                    t = time.monotonic()
                    rng = random.Random(cfg.run.seed * 7919 + round_)
                    tasks = rng.sample(self.train_tasks, min(cfg.env.train_tasks_per_round, len(self.train_tasks)))
                    train, pairs_ref = self._episodes(a, round_, "train", tasks, cfg.env.samples_per_task,
                                                      cfg.generator.temperature)
                    row["seconds"]["rollout"] = time.monotonic() - t
                    row.update(train_reward_mean=train["reward_mean"], train_valid_rate=train["valid_rate"],
                               train_pass_rate=train["pass_rate"], train_samples=train["samples"],
                               pairs=train["pairs"])
                    tokens += train["tokens"]

                    t = time.monotonic()
                    self.reporter.phase(round_, "learn", 1)
                    learn = ray.get(a.learner.train.remote(pairs_ref))
                    row["dpo_loss"] = learn["dpo_loss"]
                    row["learner"] = learn
                    self.reporter.advance(1)
                    if not learn["pairs"]:
                        # Nothing to learn from (every reward tied): the policy is unchanged, so no new version.
                        row["seconds"]["learn"] = time.monotonic() - t
                        why = (f"all {learn['pairs_too_long']} pairs are longer than learner.max_length"
                               if learn.get("pairs_too_long") else "no preference pairs (all rewards tied)")
                        self.reporter.message(f"round {round_}: {why}; keeping weights v{version}")
                    else:
                        weights = ray.get(a.learner.publish.remote())  # small: version, checksum and a ref
                        row["seconds"]["learn"] = time.monotonic() - t
                        version = self._broadcast(a, weights, row)

                t = time.monotonic()
                ev = self._evaluate(a, round_)
                row["seconds"]["eval"] = time.monotonic() - t
                tokens += ev["tokens"]
                row.update(weights_version=version, heldout_valid_rate=ev["valid_rate"],
                           heldout_pass_rate=ev["pass_rate"], heldout_reward_mean=ev["reward_mean"],
                           heldout_samples=ev["samples"], eval_weights_versions=ev["weights_versions"],
                           tokens_generated=tokens)
                row["seconds"]["total"] = time.monotonic() - started
                ray.get(a.recorder.finish_round.remote(row))
                self.rows.append(row)
                self.reporter.round_done(row)
            status = "done"
            return self.rows
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            experiments = a is not None and cfg.env.name == "experiment"
            if experiments:
                from ouroboros.experiments import flush_commits

                flush_commits(a.agents, status)
            if a is not None:
                try:
                    ray.get(a.recorder.close.remote(status), timeout=30)
                except Exception:  # the store keeps every finished round whatever happens here
                    pass
            shutdown(a)
            if experiments:
                from ouroboros.experiments import close_experiments
                from ouroboros.store.experiments import ExperimentStore

                paths = RunPaths(run_dir, self.run_id)
                store = ExperimentStore(paths.db)
                try:
                    close_experiments(store, paths.experiments)
                finally:
                    store.close()


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

    resolve(cfg.sandbox.env_from)


def shutdown(a: Actors | None) -> None:
    """Stop every actor and Ray itself; sandboxes die with their runner (bwrap --die-with-parent)."""
    stop_actors(a.all if a is not None else [])


def stop_actors(handles: list) -> None:
    """Kill `handles`, then shut Ray down. A dead runner's janitor removes its sandboxes."""
    import ray

    for handle in handles:
        try:
            ray.kill(handle)
        except Exception:
            pass
    if ray.is_initialized():
        ray.shutdown()
