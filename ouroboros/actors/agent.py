"""TasksAgent: runs episodes of the `tasks` environment.

An episode is one turn of the seed-000 protocol: the prompt states the task,
the policy replies with an action, and a valid `run` action's code is called
in a sandbox with the arguments of the task's hidden tests. Only the calls'
values come back; the tests themselves are decided here, on the host
(`envs/tasks/checks.py`, `envs/tasks/harness.py`), so nothing the code does in
the sandbox can claim a pass. The agent asks for all its episodes' completions
in one generate call, so the generator can batch them, then spreads the execs
over the sandbox runners.
"""
from __future__ import annotations

import itertools

from ouroboros.actors.handles import resolve, submit
from ouroboros.config import Config, SandboxConfig
from ouroboros.envs.protocol import parse_action
from ouroboros.envs.tasks import build_messages, harness
from ouroboros.envs.tasks.checks import TestRefused
from ouroboros.envs.tasks.dataset import suite_of
from ouroboros.types import Action, Request, Step, Task, Trajectory


class TasksAgent:
    def __init__(self, generators: list, runners: list, max_new_tokens: int = 192, cfg: Config | None = None,
                 sandbox: SandboxConfig | None = None) -> None:
        """`cfg`: the run's config: the credentials to redact (read here, from this process's
        environment) and the runners' sandbox settings, whose time and output limits each exec
        is fitted to (`sandbox` overrides them, for an agent made without a run config)."""
        from ouroboros.secrets import Redactor, redactor_for

        if not generators or not runners:
            raise ValueError("an agent needs at least one generator and one sandbox runner")
        # Model text enters here; the config's credentials are read from this process's
        # environment (ouroboros/secrets.py), never passed in.
        self.redactor = redactor_for(cfg) if cfg is not None else Redactor({})
        self.generators = generators
        self.runners = runners
        self.max_new_tokens = max_new_tokens
        self.sandbox = sandbox or (cfg.sandbox if cfg is not None else SandboxConfig())
        self._next_generator = itertools.cycle(range(len(generators)))
        self._next_runner = itertools.count()

    def run_episode(self, task: Task, round_: int = 0, sample: int = 0, temperature: float = 1.0,
                    top_p: float = 1.0, seed: int | None = None) -> Trajectory:
        return self.run_episodes([task], 1, round_, temperature, top_p, seed, first_sample=sample)[0]

    def run_episodes(self, tasks: list[Task], samples: int, round_: int, temperature: float,
                     top_p: float = 1.0, seed: int | None = None, first_sample: int = 0) -> list[Trajectory]:
        plan = [(task, first_sample + k) for task in tasks for k in range(samples)]
        requests = [
            Request(id=f"r{round_}-{task.id}-{task.split}-s{k}", messages=build_messages(task),
                    max_new_tokens=self.max_new_tokens, temperature=temperature, top_p=top_p,
                    # Each sample its own seed: a backend that seeds per request (vllm) would
                    # otherwise return one reply four times.
                    seed=None if seed is None else seed + k)
            for task, k in plan
        ]
        generator = self.generators[next(self._next_generator)]
        completions = [self.redactor.completion(c) for c in resolve(submit(generator, "generate", requests))]

        # Parse every reply; start an exec for each valid run action, all at once.
        # A request the backend refused alone (too long for the engine) is an invalid reply that says why.
        actions = [Action(None, "", "", False, c.error) if c.error else parse_action(c.text) for c in completions]
        pending, refused = {}, {}
        for i, ((task, _), action) in enumerate(zip(plan, actions)):
            if action.valid and action.name == "run":
                try:
                    suite = suite_of(task)
                except TestRefused as exc:  # task sets are checked when loaded; a hand-made Task may not be
                    refused[i] = f"the task's tests cannot be decided: {exc}"
                    continue
                unit = harness.Unit(action.data, suite.wire(), harness.unit_timeout(self.sandbox.timeout_s))
                job = harness.prepare([unit], self.sandbox.output_bytes)
                runner = self.runners[next(self._next_runner) % len(self.runners)]
                pending[i] = (submit(runner, "exec", job.program, job.files, job.limits), job, suite)

        trajectories = []
        for i, ((task, k), request, completion, action) in enumerate(zip(plan, requests, completions, actions)):
            result, outcome = None, {"ran": False, "passed": 0, "total": len(task.tests),
                                     "error": refused.get(i) or action.error
                                     or f"action {action.name!r} does not run code"}
            if i in pending:
                handle, job, suite = pending[i]
                exec_result = resolve(handle)
                reports, failure = harness.read(exec_result, job)
                outcome = harness.outcome(suite, reports[0], exec_result, failure)
                # The runner redacted the harness's JSON lines; what they decode to (an escaped
                # separator turned back into a newline, a stream cut inside the sandbox) is text
                # entering the store too, so it is redacted again, whole, here.
                result = self.redactor.result(harness.candidate_result(exec_result, reports[0]))
                outcome["error"] = self.redactor.redact(outcome["error"])
                outcome["failures"] = [(test, self.redactor.redact(why)) for test, why in outcome["failures"]]
            step = Step(index=0, request=request, completion=completion, action=action, result=result,
                        outcome=outcome)
            trajectories.append(Trajectory(id=f"{request.id}", task_id=task.id, split=task.split,
                                           round=round_, sample=k, steps=[step]))
        return trajectories
