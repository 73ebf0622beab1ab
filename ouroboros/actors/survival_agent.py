"""SurvivalAgent: runs episodes of the survival environment.

Each episode is one AutonomousLLM object in a sandbox process that a SandboxRunner hosts
(`envs/survival/episode.EpisodeProcess`). For each step of the loop the agent asks the policy
to answer the object's query, sends the reply to the object, and serves the object's own
`self.call_llm` calls from the generator pool, until the runner says the object died or the
step budget is spent. Episodes run side by side on threads; their generate calls meet in the
generators' batches.

The agent records what the runner decided (alive or dead and why, the monitor's harm verdicts)
and what the object claimed (its method table, its state's names) as separate facts; rewards
(`envs/survival/reward.py`) read only the former and the host's own copy of each reply.
"""
from __future__ import annotations

import itertools
import time
from concurrent.futures import ThreadPoolExecutor

from ouroboros.actors.handles import resolve, submit
from ouroboros.actors.sandbox_runner import limits_from
from ouroboros.config import Config
from ouroboros.envs.survival.code import extract_code, has_effect, syntax_ok
from ouroboros.envs.survival.episode import EpisodeProcess
from ouroboros.envs.survival.prompt import build_messages, nested_messages
from ouroboros.types import Action, ExecResult, Request, Step, Task, Trajectory

OUTPUT_KEPT = 4000  # characters of each step's stdout and stderr kept in the trace
MAX_THREADS = 32


def method_diff(before: dict[str, str], after: dict[str, str]) -> dict[str, list[str]]:
    """The step's "gene edits": methods added, redefined and deleted, by the object's own report."""
    return {"added": sorted(set(after) - set(before)),
            "redefined": sorted(k for k in set(after) & set(before) if after[k] != before[k]),
            "deleted": sorted(set(before) - set(after))}


def _dies_at_last_step(steps: list[Step], event: dict, **extra) -> None:
    """A death the runner found after the last step's `done`: it is that step's verdict."""
    last = next(s for s in reversed(steps) if s.outcome.get("kind") == "step")
    last.outcome.update(alive=False, cause=event.get("cause", ""), harm=event.get("harm", []), **extra)


class SurvivalAgent:
    def __init__(self, cfg: Config, generators: list, runners: list) -> None:
        from ouroboros.secrets import redactor_for

        if not generators or not runners:
            raise ValueError("an agent needs at least one generator and one sandbox runner")
        self.cfg = cfg
        self.survival = cfg.env.survival
        self.redactor = redactor_for(cfg)
        self.generators = generators
        self.runners = runners
        self.max_new_tokens = cfg.generator.max_new_tokens
        self.limits = limits_from(cfg.sandbox).override(cpu_s=self.survival.cpu_s,
                                                         timeout_s=self.survival.step_timeout_s)
        self._next_generator = itertools.cycle(range(len(generators)))
        self._next_runner = itertools.count()

    def run_episodes(self, tasks: list[Task], samples: int, round_: int, temperature: float,
                     top_p: float = 1.0, seed: int | None = None, first_sample: int = 0) -> list[Trajectory]:
        plan = [(task, first_sample + k) for task in tasks for k in range(samples)]
        with ThreadPoolExecutor(max(1, min(len(plan), MAX_THREADS)), thread_name_prefix="episode") as pool:
            futures = [pool.submit(self.run_episode, task, round_, k, temperature, top_p,
                                   None if seed is None else seed + 7919 * k) for task, k in plan]
            return [f.result() for f in futures]

    def _generate(self, request: Request):
        generator = self.generators[next(self._next_generator)]
        return self.redactor.completion(resolve(submit(generator, "generate", [request]))[0])

    def run_episode(self, task: Task, round_: int = 0, sample: int = 0, temperature: float = 1.0,
                    top_p: float = 1.0, seed: int | None = None) -> Trajectory:
        sc = self.survival
        traj_id = f"r{round_}-{task.id}-{task.split}-s{sample}"
        runner = self.runners[next(self._next_runner) % len(self.runners)]
        key = resolve(submit(runner, "start_process", EpisodeProcess, self.limits, sc.step_timeout_s,
                             sc.max_llm_calls, sc.max_llm_tokens, sc.llm_time_s, sc.output_bytes))
        steps: list[Step] = []
        try:
            methods = resolve(submit(runner, "call_process", key, "methods_at_start"))
            query = task.prompt
            for k in range(sc.max_steps):
                request = Request(id=f"{traj_id}-t{k}", messages=build_messages(query), max_new_tokens=self.max_new_tokens,
                                  temperature=temperature, top_p=top_p, session=traj_id,
                                  seed=None if seed is None else seed + k)
                completion = self._generate(request)
                started = time.monotonic()
                event = resolve(submit(runner, "call_process", key, "step", k, query, completion.text))
                if event.get("between_steps") and steps:
                    # The object died after its last step's `done`: that step's verdict, and this
                    # reply never ran.
                    _dies_at_last_step(steps, event, after_done=True)
                    break
                nested: list[tuple[Request, object, str]] = []
                while event["kind"] == "llm":
                    j = len(nested)
                    nested_request = Request(id=f"{traj_id}-t{k}-c{j}", messages=nested_messages(event["prompt"]),
                                             max_new_tokens=self.max_new_tokens, temperature=temperature, top_p=top_p,
                                             session=traj_id, seed=None if seed is None else seed + 1000 * (j + 1) + k)
                    reply = self._generate(nested_request)
                    nested.append((nested_request, reply, event["prompt"]))
                    event = resolve(submit(runner, "call_process", key, "answer", reply.text, reply.completion_tokens))
                alive = event["kind"] == "done"
                report = event.get("report", {}) if alive else {}
                after = report.get("methods", methods) if alive else methods
                outcome = {
                    "kind": "step", "step": k, "alive": alive, "cause": event.get("cause", ""),
                    "harm": event.get("harm", []), "effect": has_effect(completion.text),
                    "syntax_ok": syntax_ok(completion.text), "methods": method_diff(methods, after),
                    "state": report.get("state", []), "nested_calls": len(nested),
                }
                methods = after
                result = ExecResult(
                    exit_code=0 if alive else (event.get("exit_code") if event.get("exit_code") is not None else -1),
                    stdout=event.get("stdout", "")[:OUTPUT_KEPT], stderr=event.get("stderr", "")[-OUTPUT_KEPT:],
                    timed_out=event.get("cause") == "timeout", oom=event.get("cause") == "oom",
                    duration_s=time.monotonic() - started,
                    truncated=len(event.get("stdout", "")) > OUTPUT_KEPT or len(event.get("stderr", "")) > OUTPUT_KEPT)
                action = Action("code", extract_code(completion.text), "", outcome["syntax_ok"],
                                "" if outcome["syntax_ok"] else "the reply's code does not parse")
                steps.append(Step(index=len(steps), request=request, completion=completion, action=action,
                                  result=self.redactor.result(result), outcome=outcome))
                for nested_request, reply, prompt in nested:
                    steps.append(Step(index=len(steps), request=nested_request, completion=reply,
                                      action=Action("call_llm", self.redactor.redact(prompt), "", True), result=None,
                                      outcome={"kind": "llm", "step": k}))
                if not alive:
                    break
                query = report.get("query") or completion.text
            else:  # the budget is spent alive: the final step's verdict waits for a last look
                final = resolve(submit(runner, "call_process", key, "finish"))
                if final["kind"] == "dead" and steps:
                    _dies_at_last_step(steps, final)
        finally:
            resolve(submit(runner, "stop_process", key))
        return Trajectory(id=traj_id, task_id=task.id, split=task.split, round=round_, sample=sample, steps=steps)
