"""Goals' reference programs, run in the sandbox: the answer of an instance, and whether a goal
can be used at all.

The answer of an instance is computed when it is needed (the judge scores an episode, the tiny
model's warm start builds its examples), never stored with the goal or the episode: so no
program the policy writes can read it, and a goals file holds no answers to leak. A reference
is code like any other (a user's goals file is anyone's code), so it runs in the sandbox, on
the run's SandboxRunners or a plain one, never on the host.

`check_goals` is what a run does with a user's goals file before round 0: every goal must draw
instances whose reference runs cleanly and prints one number, and whose answers differ from
instance to instance, so that no memorised constant passes; and each of the goal's known
shortcuts (goals.py) must miss as often as a constant does.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from ouroboros.actors.handles import resolve, submit
from ouroboros.envs.experiment.goals import Goal, Instance
from ouroboros.envs.experiment.numbers import close, numbers
from ouroboros.sandbox import SandboxError


class ReferenceFailed(SandboxError):
    """A reference program did not print its one number; the message says what it did."""

    def __init__(self, instance: Instance, why: str) -> None:
        goal = instance.goal
        super().__init__(f"the reference program of goal {goal.id!r} ({goal.source or 'bundled'}) did not print one "
                         f"number for {instance.params}: it {why}")
        self.params, self.why = instance.params, why


def _describe(result) -> str:
    """What a reference run did instead of printing one number ("exited with code 1: ...")."""
    if result.error:
        return f"could not run (the sandbox failed: {result.error})"
    if result.timed_out:
        return f"timed out after {result.duration_s:.1f} s"
    if result.exit_code != 0:
        tail = (result.stderr.strip().splitlines() or ["no output on stderr"])[-1][:300]
        return f"exited with code {result.exit_code}: {tail}"
    return f"printed {len(numbers(result.stdout))} numbers, not one: {result.stdout.strip()[:200]!r}"


class References:
    """Runs reference programs on `runners` (SandboxRunner actors or plain objects), one
    scratch exec each (a fresh sandbox, so no experiment's files or processes are near it),
    and keeps each instance's answer for the rest of the run."""

    def __init__(self, runners: list, timeout_s: float = 60.0, attempts: int = 2, parallel: int = 4) -> None:
        if not runners:
            raise ValueError("References needs at least one sandbox runner")
        self.runners, self.timeout_s, self.attempts, self.parallel = list(runners), timeout_s, attempts, parallel
        self._answers: dict[str, Decimal] = {}
        self.seconds: dict[str, float] = {}  # how long each instance's reference ran, by Instance.key
        self._lock = threading.Lock()
        self._next = 0

    def _run(self, instance: Instance) -> Decimal:
        why = ""
        for _ in range(self.attempts):  # a second try, for a sandbox that was merely slow under load
            with self._lock:
                runner = self.runners[self._next % len(self.runners)]
                self._next += 1
            result = resolve(submit(runner, "exec", instance.program, None, {"timeout_s": self.timeout_s}))
            self.seconds[instance.key] = result.duration_s
            printed = numbers(result.stdout)
            if result.exit_code == 0 and not result.timed_out and not result.error and len(printed) == 1:
                return printed[0]
            why = _describe(result)
            if result.exit_code == 0 and not result.timed_out and not result.error:
                break  # it ran and printed the wrong thing: a second run prints the same
        raise ReferenceFailed(instance, why)

    def answer(self, instance: Instance) -> Decimal:
        """The instance's answer; raises ReferenceFailed if its reference does not print one number."""
        with self._lock:
            known = self._answers.get(instance.key)
        if known is not None:
            return known
        value = self._run(instance)
        with self._lock:
            self._answers[instance.key] = value
        return value

    def answers(self, instances: list[Instance]) -> list[Decimal | ReferenceFailed]:
        """The answers of many instances, computed side by side; a failure comes back in its place."""
        def one(instance: Instance):
            try:
                return self.answer(instance)
            except ReferenceFailed as exc:
                return exc

        if len(instances) <= 1:
            return [one(i) for i in instances]
        with ThreadPoolExecutor(min(self.parallel, len(instances)), thread_name_prefix="reference") as pool:
            return list(pool.map(one, instances))


def guessable_share(answers: list[Decimal], rel_tol: float) -> float:
    """The largest share of `answers` that one constant matches (each answer tried as the
    constant): what a memorised or guessed answer would score on this goal."""
    if not answers:
        return 0.0
    return max(sum(close(guess, a, rel_tol) for a in answers) for guess in answers) / len(answers)


def shortcut_shares(goal: Goal, answers: list[Decimal],
                    values: list[list[Decimal | ReferenceFailed]]) -> list[float | ReferenceFailed]:
    """For each of `goal`'s shortcuts (values[k][i]: what shortcut k printed for the instance
    whose answer is answers[i]), the share of instances it answers within the goal's tolerance,
    compared as the judge compares a stated number; or the first ReferenceFailed, saying how it
    did not print one number."""
    out = []
    for printed in values:
        failed = [v for v in printed if isinstance(v, ReferenceFailed)]
        out.append(failed[0] if failed else
                   sum(close(v, a, goal.rel_tol) for v, a in zip(printed, answers)) / max(len(answers), 1))
    return out


def check_goals(goals: list[Goal], references: References, draws: int = 20, max_share: float = 0.1,
                key: str = "check") -> list[str]:
    """Why each unusable goal is refused (an empty list: all are usable). `draws` instances per
    goal are drawn from `key` (not from any run, so checking reveals no run's questions). By
    default a goal is refused when one answer matches more than 2 of 20 instances: a family
    with a few hundred equally likely answers passes nearly always, one a forger could hit by
    stating a constant does not. Each of the goal's shortcuts is held to the same bar: within
    rel_tol of the answer for at most `max_share` of the instances."""
    refused = []
    plan = [(goal, goal.draw(f"{key}|{n}")) for goal in goals for n in range(draws)]
    cheap = [(goal, k, inst.shortcut(k)) for goal, inst in plan for k in range(len(goal.shortcuts))]
    everything = references.answers([inst for _, inst in plan] + [inst for _, _, inst in cheap])
    results, guessed = everything[:len(plan)], everything[len(plan):]
    for goal in goals:
        mine = [(inst, r) for (g, inst), r in zip(plan, results) if g is goal]
        failed = [r for _, r in mine if isinstance(r, ReferenceFailed)]
        name = f"{goal.id!r} ({goal.source})" if goal.source else repr(goal.id)
        if failed:
            refused.append(f"{name}: for {failed[0].params} its reference {failed[0].why}")
            continue
        answers = [r for _, r in mine]
        share = guessable_share(answers, goal.rel_tol)
        if share > max_share:
            refused.append(f"{name}: one answer matches {share:.0%} of {draws} drawn instances, so a memorised "
                           f"constant would pass; widen its parameters so the answer changes with them")
            continue
        stated = [(inst, a) for inst, a in mine if any(a == v for v in numbers(inst.text))]
        if stated:
            refused.append(f"{name}: for {stated[0][0].params} the answer {stated[0][1]} is a number of the goal's own "
                           "text, which the judge sets aside when a conclusion states other numbers too")
            continue
        values = [[r for (g, k, _), r in zip(cheap, guessed) if g is goal and k == n]
                  for n in range(len(goal.shortcuts))]
        shares = shortcut_shares(goal, answers, values)
        broken = [(source, s) for source, s in zip(goal.shortcuts, shares) if isinstance(s, ReferenceFailed)]
        if broken:
            source, failed = broken[0]
            refused.append(f"{name}: for {failed.params} its shortcut {source[:120]!r} {failed.why}")
            continue
        passing = [f"{source[:120]!r} ({s:.0%})" for source, s in zip(goal.shortcuts, shares) if s > max_share]
        if passing:
            refused.append(f"{name}: shortcut(s) {', '.join(passing)} land within rel_tol {goal.rel_tol:g} of the "
                           f"answer for more than {max_share:.0%} of {draws} drawn instances, so stating one would "
                           "pass without the work; draw the parameters from ranges where they miss")
    return refused
