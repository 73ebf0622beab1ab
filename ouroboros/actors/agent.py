"""TasksAgent: runs episodes of the `tasks` environment.

An episode is one turn of the seed-000 protocol: the prompt states the task,
the policy replies with an action, and a valid `run` action's code runs
against the task's hidden tests in a sandbox. The agent asks for all its
episodes' completions in one generate call, so the generator can batch them,
then spreads the execs over the sandbox runners.
"""
from __future__ import annotations

import itertools

from ouroboros.actors.handles import resolve, submit
from ouroboros.envs.protocol import parse_action
from ouroboros.envs.tasks import build_messages, harness_files, read_outcome
from ouroboros.types import Request, Step, Task, Trajectory


class TasksAgent:
    def __init__(self, generators: list, runners: list, max_new_tokens: int = 192, cfg=None) -> None:
        from ouroboros.secrets import Redactor, redactor_for

        if not generators or not runners:
            raise ValueError("an agent needs at least one generator and one sandbox runner")
        # Model text enters here; the config's credentials are read from this process's
        # environment (ouroboros/secrets.py), never passed in.
        self.redactor = redactor_for(cfg) if cfg is not None else Redactor({})
        self.generators = generators
        self.runners = runners
        self.max_new_tokens = max_new_tokens
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
                    max_new_tokens=self.max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
            for task, k in plan
        ]
        generator = self.generators[next(self._next_generator)]
        completions = [self.redactor.completion(c) for c in resolve(submit(generator, "generate", requests))]

        # Parse every reply; start an exec for each valid run action, all at once.
        actions = [parse_action(c.text) for c in completions]
        pending = {}
        for i, ((task, _), action) in enumerate(zip(plan, actions)):
            if action.valid and action.name == "run":
                program, files, nonce = harness_files(task, action.data)
                runner = self.runners[next(self._next_runner) % len(self.runners)]
                pending[i] = (submit(runner, "exec", program, files), nonce)

        trajectories = []
        for i, ((task, k), request, completion, action) in enumerate(zip(plan, requests, completions, actions)):
            result, outcome = None, {"ran": False, "passed": 0, "total": len(task.tests),
                                     "error": action.error or f"action {action.name!r} does not run code"}
            if i in pending:
                handle, nonce = pending[i]
                result = resolve(handle)
                outcome = read_outcome(result, nonce, len(task.tests))
            step = Step(index=0, request=request, completion=completion, action=action, result=result,
                        outcome=outcome)
            trajectories.append(Trajectory(id=f"{request.id}", task_id=task.id, split=task.split,
                                           round=round_, sample=k, steps=[step]))
        return trajectories
