"""ExperimentAgent: runs experiment cycles (seed 000) with shared generator and sandbox pools.

Two callers: `ouroboros experiment` asks for one cycle at a time (`run_cycle`), and a learning
run (`ouroboros run` with `env.name: experiment`) asks for a batch of episodes on research
goals (`run_episodes`), which come back as Trajectories for the judge and the learner.

A plain class; `experiments.py` wraps it with `ray.remote` as a threaded actor that runs up to
`experiment.cycles_per_agent` cycles at once: a cycle mostly waits on the model and the
sandbox, so one process can carry several, and 32 cycles do not cost 32 Python processes. It
talks to the pools through handles: generation and sandbox sessions are actor calls, so many
cycles share a few generators and runners. A session stays on the runner that opened it (its
workdir and warm container live there). Each thread has its own SQLite connection.
"""
from __future__ import annotations

import itertools
import random
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

from ouroboros.config import Config
from ouroboros.envs.experiment.cycle import Episode, ExperimentCycle
from ouroboros.store.experiments import KnowledgeScope
from ouroboros.types import Completion, ExecResult, Request, Trajectory


class RunnerPool:
    """The `Sandboxes` protocol over SandboxRunner handles (Ray actors) or plain runners."""

    def __init__(self, runners: list, start: int = 0, holder: str | None = None) -> None:
        self.runners, self.holder = runners, holder
        self._next = itertools.count(start)
        self.sessions: dict[str, tuple[object, str]] = {}

    @staticmethod
    def _call(method, *args, **kwargs):
        if hasattr(method, "remote"):
            import ray

            try:
                return ray.get(method.remote(*args, **kwargs))
            except ray.exceptions.RayTaskError as exc:
                # The actor's own exception (BuildFailed, SandboxError, BackendError), not Ray's
                # wrapper, whose message carries a remote traceback.
                cause = getattr(exc, "cause", None)
                if isinstance(cause, Exception):
                    raise cause from None
                raise
        return method(*args, **kwargs)

    def open(self) -> str:
        runner = self.runners[next(self._next) % len(self.runners)]
        session = self._call(runner.open_session, self.holder) if self.holder else self._call(runner.open_session)
        self.sessions[session] = (runner, session)
        return session

    def exec(self, session: str, program: str, timeout_s: float) -> ExecResult:
        runner, sid = self.sessions[session]
        return self._call(runner.exec, program, None, {"timeout_s": timeout_s}, session=sid)

    def build(self, session: str, dockerfile: str) -> str:
        runner, sid = self.sessions[session]
        return self._call(runner.build, sid, dockerfile)

    def close(self, session: str) -> None:
        runner, sid = self.sessions.pop(session)
        self._call(runner.close_session, sid)


class ResearchTools:
    """web_search and load_url as the cycle sees them: text results, ResearchError on failure."""

    def __init__(self, cfg: Config) -> None:
        from ouroboros.envs.experiment import research

        self.r, self.cfg = research, cfg.experiment.research
        self.provider = None
        if self.cfg.web_search:
            self.provider = research.make_search_provider(
                self.cfg.search_provider, self.cfg.google_api_key_env, self.cfg.google_engine_id_env,
                self.cfg.search_endpoint)

    def web_search(self, query: str) -> str:
        if self.provider is None:
            raise self.r.ResearchError("web_search is disabled in this config (experiment.research.web_search)")
        hits = self.provider.search(query, self.cfg.max_results)
        if not hits:
            return "no results"
        return "\n\n".join(f"{h.title}\n{h.url}\n{h.snippet}" for h in hits)

    def load_url(self, url: str) -> str:
        if not self.cfg.load_url:
            raise self.r.ResearchError("load_url is disabled in this config (experiment.research.load_url)")
        page = self.r.load_url(url, allow_hosts=self.cfg.allow_hosts, timeout_s=self.cfg.timeout_s,
                               max_bytes=self.cfg.max_bytes, max_chars=self.cfg.max_chars)
        note = " (truncated)" if page.truncated else ""
        return f"{page.url} [{page.status} {page.content_type}]{note}\n{page.text}"


class ExperimentAgent:
    def __init__(self, cfg: Config, run_id: str, run_dir: str, generators: list, runners: list, slot: int = 0) -> None:
        from ouroboros.sandbox import reaper
        from ouroboros.store.committer import Committer
        from ouroboros.store.experiments import ExperimentStore
        from ouroboros.store.git_repo import ExperimentRepo

        from ouroboros.secrets import redactor_for
        from ouroboros.store.layout import RunPaths

        self.cfg, self.run_id = cfg, run_id
        # Built here, from this process's environment: secret values never travel as Ray arguments.
        self.redactor = redactor_for(cfg)
        self.generators = generators
        self.owner = reaper.owner_token()
        # Sessions carry this process's token: if it dies mid-cycle, the driver has them closed.
        self.pool = RunnerPool(runners, start=slot, holder=self.owner)
        paths = RunPaths(run_dir, run_id)
        paths.run.mkdir(parents=True, exist_ok=True)
        self.db_path = paths.db
        ExperimentStore(self.db_path).close()  # the schema, once, before cycles open their own
        self.log_path = str(paths.experiments_log)
        # Commits happen in the background, batched across this agent's cycles.
        self.committer = Committer(ExperimentRepo(paths.experiments), self.db_path, self.log_path)
        self.research = ResearchTools(cfg) if (cfg.experiment.research.web_search or cfg.experiment.research.load_url) else None
        self._local = threading.local()
        self._episode_pool: ThreadPoolExecutor | None = None

    def owner_token(self) -> str:
        """This agent's process as an owner (`<pid>-<start time>`): its experiment rows and its
        sandbox sessions carry it."""
        return self.owner

    def _generator_for(self, slot: int, session: str, temperature: float | None = None, top_p: float = 1.0,
                       seed: str | None = None):
        """generate(messages) for one cycle: its slot's generator (spreading slots over the
        pool), with the cycle as the request's session (a `scripted` generator replays its
        script to each cycle from the start). With a `seed`, each turn gets its own seed drawn
        from it, so two samples draw different ones. (A rerun repeats its samples only where a
        call is generated alone: a coalesced local model seeds a batch from its first request.)"""
        generator = self.generators[slot % len(self.generators)]
        temperature = self.cfg.experiment.temperature if temperature is None else temperature
        seeds = random.Random(seed) if seed is not None else None

        def generate(messages: list[dict]) -> Completion:
            request = Request(id=secrets.token_hex(8), messages=messages, session=session,
                              max_new_tokens=self.cfg.experiment.max_new_tokens, temperature=temperature,
                              top_p=top_p, seed=seeds.randrange(2**31) if seeds else None)
            generate.last_request = request  # a cycle's calls are sequential: its turn records this one
            # Model text enters here: redacted before the cycle, the store or a prompt sees it.
            return self.redactor.completion(RunnerPool._call(generator.generate, [request])[0])

        generate.last_request = None
        return generate

    def _store(self):
        """This thread's SQLite connection: cycles on one thread reuse it, threads never share one."""
        from ouroboros.store.experiments import ExperimentStore

        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = ExperimentStore(self.db_path)
        return store

    def run_cycle(self, cycle: int, slot: int = 0) -> dict:
        generate = self._generator_for(slot, f"{self.run_id}/cycle-{cycle}")
        scope = KnowledgeScope.of_run(self.run_id, self.cfg.experiment.learn_from_runs)
        return self._cycle(cycle, generate, scope=scope).run()

    def _cycle(self, cycle: int, generate, **episode) -> ExperimentCycle:
        """A cycle on this agent's pools, store (this thread's connection), committer and log."""
        return ExperimentCycle(self.cfg, self.run_id, cycle, self.owner, generate, self.pool, self._store(),
                               self.committer, self.research, self.log_path, redactor=self.redactor, **episode)

    def run_episodes(self, goals: list, samples: int, round_: int, temperature: float, top_p: float = 1.0,
                     seed: int | None = None, first_sample: int = 0) -> list[Trajectory]:
        """`samples` cycles on each research goal (envs/experiment/goals.py), up to
        `experiment.cycles_per_agent` at once. Each goal is asked as this round's instance (its
        parameters drawn from the run, the round and the goal), the same for all its samples.
        Train cycles see the train experiments of earlier rounds (of this run, and of the runs
        named in `experiment.learn_from_runs`); held-out cycles see none (see KnowledgeScope)."""
        if self._episode_pool is None:
            self._episode_pool = ThreadPoolExecutor(self.cfg.experiment.cycles_per_agent,
                                                    thread_name_prefix="episode")
        scope = KnowledgeScope.of_run(self.run_id, self.cfg.experiment.learn_from_runs, before_round=round_,
                                      split="train")
        # A held-out cycle sees no experiment at all: not another evaluation's, and no train
        # experiment's code or answers (runs=() matches none).
        blind = KnowledgeScope(runs=())
        plan = [(goal, first_sample + k) for goal in goals for k in range(samples)]

        def one(position: int, goal, k: int) -> Trajectory:
            tid = f"r{round_}-{goal.id}-{goal.split}-s{k}"
            generate = self._generator_for(position, f"{self.run_id}/{tid}", temperature, top_p,
                                           None if seed is None else f"{seed}/{tid}")
            instance = goal.instance(self.run_id, round_)
            cycle = self._cycle(position, generate, goal=instance.text,
                                episode=Episode(goal.id, round_, goal.split, scope if goal.split == "train" else blind,
                                                instance.params))
            cycle.run()  # never raises for the cycle's own failures: the row ends failed, with why
            return Trajectory(id=tid, task_id=goal.id, split=goal.split, round=round_, sample=k, steps=cycle.turns,
                              params=instance.params)

        futures = [self._episode_pool.submit(one, n, goal, k) for n, (goal, k) in enumerate(plan)]
        return [f.result() for f in futures]

    def flush(self, timeout_s: float = 120.0) -> bool:
        """Wait until every finished experiment of this agent has its git commit."""
        return self.committer.flush(timeout_s)

    def close(self, timeout_s: float = 120.0) -> bool:
        """Commit what is left and stop this agent's threads. An actor needs no call (its process
        ends with the run); a plain agent does, or its threads outlive it, and where sandboxes run
        as the caller's own user they count against its process limit."""
        if self._episode_pool is not None:
            self._episode_pool.shutdown(wait=True)
            self._episode_pool = None
        return self.committer.close(timeout_s)
