"""One experiment cycle (seed 000): the model picks actions until it finalizes or hits a limit.

`ExperimentCycle.run()` is a plain method over plain collaborators, so it is tested without Ray:
- `generate(messages) -> Completion`: the policy (a Generator actor, an API, `scripted`); it may
  say which `Request` it last sent (`last_request`), which the turns then record;
- `sandboxes`: a session API (`open`, `exec`, `build`, `close`) over SandboxRunners;
- `store` (`ExperimentStore`), `repo` (`ExperimentRepo`, or a `Committer` that commits in the
  background), and `research` (or None).

Every limit the seed declared is enforced: `max_actions`; `max_errors` consecutive failed
actions; `time_limit_s` as wall time, which also bounds the action that is running (its exec
timeout is the time left) and a model call in flight (`bounded`); a token budget; and a cost
budget priced from config. Whatever happens, the experiment row ends `finalized`, `limit` or
`failed`, never half-written, and its sandbox session is closed.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ouroboros.config import Config
from ouroboros.envs.experiment import prompt as prompt_mod
from ouroboros.envs.experiment.query import ask
from ouroboros.envs.protocol import ACTIONS
from ouroboros.secrets import Redactor
from ouroboros.store.experiments import KnowledgeScope
from ouroboros.types import Completion, ExecResult, Request, Step

log = logging.getLogger(__name__)


class Sandboxes(Protocol):
    def open(self) -> str: ...
    def exec(self, session: str, program: str, timeout_s: float) -> ExecResult: ...
    def build(self, session: str, dockerfile: str) -> str: ...
    def close(self, session: str) -> None: ...


def pool_died(exc: BaseException) -> bool:
    """An actor the cycle depends on (a generator, a sandbox runner) is gone."""
    try:
        import ray.exceptions as rx
    except ImportError:
        return False
    return isinstance(exc, (rx.RayActorError, rx.WorkerCrashedError, rx.OutOfMemoryError))


class TimeLimit(Exception):
    """The experiment's time ran out during a model call: the cycle ends as a limit."""


def bounded(generate: Callable[[list[dict]], Completion], deadline: float, limit_s: float):
    """`generate` that gives up at `deadline` (time.monotonic()). The call runs on its own thread,
    so a slow provider or a busy generator cannot hold the cycle past its time limit; a call
    given up on finishes in the background (bounded by the provider's own timeout) and its
    reply is dropped."""

    def call(messages: list[dict]) -> Completion:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeLimit(f"time limit of {limit_s:g} s reached before a model call")
        box: dict = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["reply"] = generate(messages)
            except BaseException as exc:  # re-raised in the cycle's thread
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=run, name="model-call", daemon=True).start()
        if not done.wait(remaining):
            raise TimeLimit(f"time limit of {limit_s:g} s reached during a model call")
        if "error" in box:
            raise box["error"]
        return box["reply"]

    return call


class Research(Protocol):
    def web_search(self, query: str) -> str: ...
    def load_url(self, url: str) -> str: ...


@dataclass
class Span:
    """A trace span (InterLab-style): experiment > action > its parts, with timings and tokens."""

    experiment_id: int
    kind: str
    name: str
    parent_id: str | None = None
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    started_at: float = field(default_factory=time.time)
    duration_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attrs: dict = field(default_factory=dict)

    def end(self, **attrs) -> "Span":
        self.duration_s = time.time() - self.started_at
        self.attrs.update(attrs)
        return self

    def row(self) -> dict:
        return {"id": self.id, "experiment_id": self.experiment_id, "parent_id": self.parent_id, "kind": self.kind,
                "name": self.name, "started_at": self.started_at, "duration_s": self.duration_s,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "attrs": self.attrs}


def describe_exec(result: ExecResult, chars: int) -> str:
    flags = [name for name in ("timed_out", "oom", "truncated") if getattr(result, name)]
    head = f"exit code {result.exit_code}" + (f" ({', '.join(flags)})" if flags else "")
    out = result.stdout[-chars:] if len(result.stdout) > chars else result.stdout
    err = result.stderr[-chars // 2:] if len(result.stderr) > chars // 2 else result.stderr
    return f"{head}\nstdout:\n{out}" + (f"\nstderr:\n{err}" if err else "")


@dataclass(frozen=True)
class Episode:
    """A cycle run as a learning episode: which goal, round and split it belongs to, the
    parameters its question was drawn with, and which earlier experiments it may see (so
    samples of one goal start from the same knowledge)."""

    task_id: str
    round: int
    split: str
    scope: KnowledgeScope | None = None
    params: dict | None = None


class ExperimentCycle:
    def __init__(self, cfg: Config, run_id: str, cycle: int, owner: str,
                 generate: Callable[[list[dict]], Completion], sandboxes: Sandboxes, store, repo,
                 research: Research | None = None, log_path: str | None = None, goal: str | None = None,
                 episode: Episode | None = None, redactor: Redactor | None = None,
                 scope: KnowledgeScope | None = None) -> None:
        self.cfg, self.x = cfg, cfg.experiment
        self.run_id, self.cycle, self.owner = run_id, cycle, owner
        self.goal = self.x.goal if goal is None else goal
        self.episode = episode
        # What earlier experiments it may see (a learning episode brings its own); None: all of them.
        self.scope = episode.scope if episode else scope
        # The turns as a learner sees them: one Step per action, with the completion that chose it.
        self.turns: list[Step] = []
        self._exec: ExecResult | None = None  # the last run action's result, for its turn
        self.generate, self.sandboxes, self.store, self.repo = generate, sandboxes, store, repo
        self.research = research
        self.log_path = log_path
        self.template = self.x.template or prompt_mod.DEFAULT_TEMPLATE
        prompt_mod.check_template(self.template)
        # Sandbox output and model text arrive redacted (the runner and the agent's `generate` do
        # it, ouroboros/secrets.py); tool output is redacted here, where it enters.
        self.redactor = redactor if redactor is not None else Redactor({})
        # Every action parses; a disabled one (research off) fails with a reason the model can read.
        self.allowed = ACTIONS

    # ------------------------------------------------------------------ the cycle

    def run(self) -> dict:
        x = self.x
        dockerfile = x.dockerfile
        ep = self.episode
        eid = self.store.start(self.run_id, self.cycle, self.owner, dockerfile, self.goal,
                               ep.task_id if ep else None, ep.round if ep else None, ep.split if ep else None,
                               ep.params if ep else None)
        root = Span(eid, "experiment", f"experiment {eid}")
        self.lines: list[str] = []
        self._log(f"experiment {eid} started (run {self.run_id}, cycle {self.cycle})")
        steps: list[dict] = []
        tokens = [0, 0]
        status, reason, final_notes, trimmed = "failed", "", "", 0
        consecutive_errors = errors = 0
        deadline = time.monotonic() + x.time_limit_s
        session = None
        demo = None  # the demonstration turns, rendered once per experiment
        generate = bounded(self.generate, deadline, x.time_limit_s)
        spans: list[Span] = [root]
        try:
            session = self.sandboxes.open()
            for index in range(x.max_actions):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    status, reason = "limit", f"time limit of {x.time_limit_s:g} s reached"
                    break
                if sum(tokens) >= x.max_tokens:
                    status, reason = "limit", f"token budget of {x.max_tokens} reached"
                    break
                if x.max_cost_usd is not None and self._cost(tokens) >= x.max_cost_usd:
                    status, reason = "limit", f"cost budget of ${x.max_cost_usd:g} reached"
                    break
                step_span = Span(eid, "action", f"action {index + 1}", parent_id=root.id)
                spans.append(step_span)
                prompt_span = Span(eid, "prompt", "render", parent_id=step_span.id)
                values = prompt_mod.values(x, self.cfg.sandbox, experiment_id=eid, current_action=index + 1,
                                           time_remaining=remaining, prev_data=self._prev_data(eid, steps),
                                           dockerfile=dockerfile, goal=self.goal)
                text, summarized = prompt_mod.render(self.template, values, steps, x.result_chars, x.context_chars)
                if x.demonstrate and demo is None:
                    demo = prompt_mod.demonstration(self.template, {**values, "time_remaining": x.time_limit_s},
                                                    x.result_chars, x.context_chars)
                trimmed = max(trimmed, summarized)
                spans.append(prompt_span.end(chars=len(text), history_summarized=summarized, prompt=text))
                query = ask(generate, prompt_mod.build_messages(text, demo), x.query_retries, self.allowed,
                            budget_ok=lambda used: sum(tokens) + used < x.max_tokens)
                for n, attempt in enumerate(query.attempts):
                    span = Span(eid, "generate", f"attempt {n + 1}", parent_id=step_span.id,
                                started_at=attempt.started_at, prompt_tokens=attempt.prompt_tokens,
                                completion_tokens=attempt.completion_tokens)
                    span.duration_s = attempt.duration_s
                    span.attrs = {"reply": attempt.text, "error": attempt.error, "finish_reason": attempt.finish_reason,
                                  "backend": attempt.completion.backend if attempt.completion else ""}
                    spans.append(span)
                tokens[0] += query.prompt_tokens
                tokens[1] += query.completion_tokens
                action = query.action
                act_span = Span(eid, "act", action.name or "invalid", parent_id=step_span.id)
                started = time.time()
                self._exec = None
                if not action.valid:
                    ok, result = False, f"invalid reply after {len(query.attempts)} attempt(s): {action.error}"
                else:
                    ok, result, dockerfile = self._act(session, action, dockerfile, deadline, act_span)
                spans.append(act_span.end(ok=ok, result=result[: x.result_chars]))
                step = {"idx": index, "action": action.name or "", "data": action.data,
                        "notes": action.notes, "valid": action.valid, "error": action.error, "result": result,
                        "ok": ok, "attempts": len(query.attempts), "started_at": started,
                        "duration_s": time.time() - started, "prompt_tokens": query.prompt_tokens,
                        "completion_tokens": query.completion_tokens}
                steps.append(step)
                self._turn(index, query, action, ok)
                self.store.add_step(eid, step)
                spans.append(step_span.end(action=action.name, ok=ok))
                self._log(f"action {index + 1}: {action.name or 'invalid'} -> {'ok' if ok else 'error'}: "
                          f"{result.splitlines()[0][:160] if result else ''}")
                if action.valid and action.name == "finalize":
                    status, reason, final_notes = "finalized", "finalized", (action.notes or action.data)
                    break
                consecutive_errors = 0 if ok else consecutive_errors + 1
                errors += 0 if ok else 1
                if consecutive_errors >= x.max_errors:
                    status, reason = "limit", f"{consecutive_errors} consecutive errors (max_errors)"
                    break
            else:
                status, reason = "limit", f"max_actions ({x.max_actions}) reached without finalize"
        except TimeLimit as exc:
            status, reason = "limit", str(exc)
        except BaseException as exc:  # the row must still end as failed, with why
            status = "failed"
            reason = self.redactor.redact(f"{type(exc).__name__}: {exc}")[:500]  # redacted before the cut
            self._log(f"experiment {eid} crashed: {reason}\n{traceback.format_exc(limit=5)}")
            # A dead generator or runner fails every later cycle too: the run must stop and say
            # so, not go on scoring empty experiments.
            if not isinstance(exc, Exception) or pool_died(exc):
                self._finish(eid, status, reason, steps, dockerfile, tokens, errors, trimmed, final_notes, spans, root)
                raise
        finally:
            if session is not None:
                try:
                    self.sandboxes.close(session)
                except Exception as exc:
                    self._log(f"closing the sandbox session failed: {exc}")
        self._finish(eid, status, reason, steps, dockerfile, tokens, errors, trimmed, final_notes, spans, root)
        if self.turns:  # what the judge reads: how the experiment ended and what it concluded
            final = steps[-1]["data"] + "\n" + steps[-1]["notes"] if status == "finalized" else ""
            self.turns[-1].outcome.update(experiment_id=eid, status=status, end_reason=reason, final=final)
        return {"experiment_id": eid, "status": status, "end_reason": reason, "actions": len(steps),
                "prompt_tokens": tokens[0], "completion_tokens": tokens[1]}

    # ------------------------------------------------------------------ actions

    def _act(self, session: str, action, dockerfile: str, deadline: float, span: Span) -> tuple[bool, str, str]:
        x = self.x
        name, data = action.name, action.data
        remaining = deadline - time.monotonic()
        if name == "run":
            # The action still running counts against the experiment's time limit.
            timeout = max(0.5, min(self.cfg.sandbox.timeout_s, remaining))
            result = self.sandboxes.exec(session, data, timeout)
            self._exec = result
            span.attrs.update(exit_code=result.exit_code, timed_out=result.timed_out, oom=result.oom,
                              image=result.image, exec_s=result.duration_s)
            ok = result.exit_code == 0 and not result.timed_out and not result.error
            text = describe_exec(result, x.result_chars)
            if result.timed_out and remaining < self.cfg.sandbox.timeout_s:
                text += f"\n(stopped by the experiment's time limit of {x.time_limit_s:g} s)"
            return ok, text, dockerfile
        if name == "environment":
            from ouroboros.sandbox import BuildFailed, SandboxError

            try:
                environment = self.sandboxes.build(session, data)
            except BuildFailed as exc:
                return False, f"the Dockerfile did not build: {exc}\nbuild log:\n{exc.log[-x.result_chars:]}", dockerfile
            except SandboxError as exc:
                return False, f"environments cannot change here: {exc}", dockerfile
            span.attrs["environment"] = environment
            return True, f"built and switched to environment {environment[:19]}", data
        if name == "search":
            hits = self.store.search(data, x.search_results, exclude=None, scope=self.scope)
            if not hits:
                return True, "no earlier experiment matches", dockerfile
            return True, "\n".join(f"experiment {h['experiment_id']} (score {h['score']}): {h['snippet']}" for h in hits), dockerfile
        if name in ("web_search", "load_url"):
            if self.research is None:
                return False, f"{name} is disabled in this config (experiment.research.{name})", dockerfile
            from ouroboros.envs.experiment.research import ResearchError

            try:
                text = self.research.web_search(data) if name == "web_search" else self.research.load_url(data.strip())
            except ResearchError as exc:
                return False, self.redactor.redact(f"{name} failed: {exc}"), dockerfile
            return True, self.redactor.redact(text), dockerfile
        if name == "finalize":
            return True, "finalized", dockerfile
        return False, f"unknown action {name!r}", dockerfile

    # ------------------------------------------------------------------ helpers

    def _turn(self, index: int, query, action, ok: bool) -> None:
        """Keep the step for a learner: the conversation of the last attempt and its completion."""
        last = query.attempts[-1] if query.attempts else None
        if last is None or last.completion is None:
            return
        # The request as sent, where the policy call says (ExperimentAgent's does); else its gist.
        sent = getattr(self.generate, "last_request", None)
        request = dataclasses.replace(sent, messages=last.messages) if sent is not None and \
            sent.id == last.completion.request_id else Request(
                id=last.completion.request_id, messages=last.messages, max_new_tokens=self.x.max_new_tokens,
                temperature=self.x.temperature)
        result = self._exec
        self.turns.append(Step(index=index, request=request, completion=last.completion, action=action,
                               result=result, outcome={"ok": ok, "attempts": len(query.attempts)}))

    def _cost(self, tokens: list[int]) -> float:
        return (tokens[0] * self.x.price_input_per_mtok + tokens[1] * self.x.price_output_per_mtok) / 1e6

    def _prev_data(self, eid: int, steps: list[dict]) -> str:
        """The most relevant earlier experiments: matched against this one's history, else the latest."""
        k = self.x.prev_experiments
        if k == 0:
            return "(disabled)"
        context = " ".join(f"{s['notes']} {s['data'][:500]}" for s in steps[-3:])
        ids = [h["experiment_id"] for h in self.store.search(context, k, exclude=eid, scope=self.scope)] \
            if context.strip() else []
        if len(ids) < k:
            ids += [i for i in self.store.recent_finished(k, exclude=eid, scope=self.scope) if i not in ids][: k - len(ids)]
        rows = self.store.summaries(ids)
        if not rows:
            return "(no earlier experiments)"
        return "\n".join(f"- #{r['id']} ({r['status']}, {r['actions']} actions): {(r['notes'] or r['end_reason'] or '')[:400]}"
                         for r in rows)

    def _log(self, line: str) -> None:
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} cycle {self.cycle}: {self.redactor.redact(line)}"
        self.lines.append(stamped)
        log.info(stamped)
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(stamped + "\n")

    def _finish(self, eid, status, reason, steps, dockerfile, tokens, errors, trimmed, notes, spans, root) -> None:
        self._log(f"experiment {eid} ended: {status} ({reason})")
        spans[0] = root.end(status=status, end_reason=reason)
        root.prompt_tokens, root.completion_tokens = tokens
        code = "\n\n".join(f"# action {s['idx'] + 1}\n{s['data']}" for s in steps if s["action"] == "run")
        index = {"notes": " ".join([notes] + [s["notes"] for s in steps]), "code": code,
                 "results": "\n".join(s["result"] for s in steps if s["ok"]),
                 "errors": "\n".join(s["result"] for s in steps if not s["ok"])}
        fields = {"notes": notes, "dockerfile": dockerfile, "actions": len(steps), "errors": errors,
                  "prompt_tokens": tokens[0], "completion_tokens": tokens[1], "cost_usd": self._cost(tokens),
                  "history_trimmed": trimmed}
        self.store.add_spans([s.row() for s in spans])
        self.store.finish(eid, status, reason, fields, index)
        files = {f"run-{s['idx'] + 1:02d}.py": s["data"] for s in steps if s["action"] == "run"}
        files.update({"Dockerfile": dockerfile, "notes.md": f"# Experiment {eid}\n\nrun {self.run_id}\n\n{status}: {reason}\n\n{notes}\n",
                      "results.json": json.dumps(steps, indent=1), "log.txt": "\n".join(self.lines) + "\n"})
        try:  # a Committer queues the commit and records it on the row itself (None here)
            commit = self.repo.commit_experiment(eid, files, f"experiment {eid} of run {self.run_id}: {status} ({reason})"[:240])
            if commit:
                self.store.set_commit(eid, commit)
        except Exception as exc:  # the DB row is complete; a git failure is logged, not fatal
            self._log(f"git commit of experiment {eid} failed: {exc}")
