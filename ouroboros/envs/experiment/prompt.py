"""The experiment prompt: a configurable template with the seed-000 variables, fitted to the context.

Variables: {experiment_id} {current_action} {max_actions} {time_remaining} {network_access}
{gpu_access} {prev_data} {action_history} {current_dockerfile} {access_info}, the seed's, and
{goal}, ours: the research goal (the config's `experiment.goal`, or a goal of a learning run).
A template that names any other variable is a config error (found at start-up, not mid-cycle).

`{access_info}` lists the *names* of the variables the config passes into the sandbox
(`sandbox.env` and the credentials of `sandbox.env_from`), never their values. When the prompt would exceed the context budget, the oldest actions of the
history are replaced by one-line summaries, then dropped, and the caller records that.
"""
from __future__ import annotations

import json
import string

VARIABLES = ("experiment_id", "current_action", "max_actions", "time_remaining", "network_access",
             "gpu_access", "prev_data", "action_history", "current_dockerfile", "access_info", "goal")

DEFAULT_TEMPLATE = """Experiment #{experiment_id}

You are Ouroboros, an AI system that runs experiments to advance AI research, building on what
earlier experiments found.

Goal: {goal}

Current status:
- Action: {current_action} of {max_actions}
- Time remaining: {time_remaining:.0f} seconds
- Network access: {network_access}
- GPU access: {gpu_access}
- Credentials available in the sandbox environment (names only): {access_info}

Earlier experiments (most relevant first):
{prev_data}

This experiment's actions so far:
{action_history}

Current Dockerfile:
{current_dockerfile}

Reply with exactly one JSON object {{"action": ..., "data": ..., "notes": ...}}. Actions:
- "run": data is Python code; it runs in the current environment, files persist in /work.
- "environment": data is a Dockerfile (FROM ouroboros-sandbox:base); later runs use it.
- "search": data is a query over earlier experiments' notes, code, results and errors.
- "web_search": data is a web search query (only if research is enabled).
- "load_url": data is an http(s) URL to read as text (only if research is enabled).
- "finalize": data and notes state what this experiment found; where the goal asks for a number,
  state that one number, as a run printed it, and no other. It ends the experiment.
Use "finalize" on or before the last action."""


# A finished two-turn experiment shown before the real prompt when `experiment.demonstrate` is
# on. Small models copy a demonstrated reply far more often than they follow described rules
# (see envs/tasks/prompt.py); API models do not need it. It follows the judge's rule for an
# answer: the conclusion states one number besides the goal's own, the one a run printed.
DEMO_GOAL = "Compute the sum of the integers from 1 to 4817."
DEMO_REPLIES = (
    {"action": "run", "data": "print(sum(range(1, 4817 + 1)))", "notes": "Sum the integers directly."},
    {"action": "finalize", "data": "The sum of the integers from 1 to 4817 is 11604153.",
     "notes": "Computed by summing them in a program."},
)
DEMO_RESULT = "exit code 0\nstdout:\n11604153\n"


class TemplateError(ValueError):
    pass


def check_template(template: str) -> None:
    """Raise TemplateError naming any unknown variable or malformed field."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise TemplateError(f"experiment.template is not a valid format string: {exc}") from None
    unknown = sorted({f.split(".")[0].split("[")[0] for f in fields} - set(VARIABLES))
    if unknown:
        raise TemplateError(f"experiment.template uses unknown variable(s) {unknown}; expected some of {list(VARIABLES)}")


def format_history(steps: list[dict], result_chars: int, summarize_before: int = 0) -> str:
    """The action history as JSON lines; steps before `summarize_before` become one-line summaries."""
    if not steps:
        return "(none yet)"
    lines = []
    for i, step in enumerate(steps):
        if i < summarize_before:
            lines.append(json.dumps({"action": step["action"], "ok": step["ok"],
                                     "notes": (step.get("notes") or "")[:120], "summarized": True}))
            continue
        lines.append(json.dumps({
            "action": step["action"], "data": (step.get("data") or "")[:result_chars],
            "notes": step.get("notes") or "", "ok": step["ok"], "result": (step.get("result") or "")[:result_chars],
        }))
    return "\n".join(lines)


def render(template: str, values: dict, steps: list[dict], result_chars: int, context_chars: int) -> tuple[str, int]:
    """The prompt, trimmed to `context_chars`. Returns (prompt, how many steps were summarized or dropped)."""
    for summarized in range(0, len(steps) + 1):
        shown = steps if summarized < len(steps) else []
        history = format_history(shown, result_chars, summarized)
        if summarized == len(steps) and steps:
            history = f"({len(steps)} earlier actions omitted to fit the context)"
        prompt = template.format(**{**values, "action_history": history})
        if len(prompt) <= context_chars:
            return prompt, summarized
    return prompt[:context_chars], len(steps)


def values(x, sandbox, *, experiment_id: int, current_action: int, time_remaining: float, prev_data: str,
           dockerfile: str, goal: str) -> dict:
    """The template's variables for one turn (`x`: ExperimentConfig, `sandbox`: SandboxConfig);
    the history is filled in by `render`."""
    return {"experiment_id": experiment_id, "current_action": current_action, "max_actions": x.max_actions,
            "time_remaining": time_remaining, "network_access": "Enabled" if sandbox.network else "Disabled",
            "gpu_access": "Enabled" if sandbox.gpus else "Disabled", "prev_data": prev_data,
            "current_dockerfile": dockerfile, "access_info": json.dumps(sorted({*sandbox.env, *sandbox.env_from})), "action_history": "",
            "goal": goal}


def demo_step(reply: dict, result: str) -> dict:
    return {"action": reply["action"], "data": reply["data"], "notes": reply["notes"], "ok": True, "result": result}


def demonstration(template: str, values: dict, result_chars: int, context_chars: int) -> list[dict]:
    """The demonstration turns, rendered with the real prompt's template and settings."""
    base = {**values, "experiment_id": 0, "goal": DEMO_GOAL, "prev_data": "(no earlier experiments)"}
    first, _ = render(template, {**base, "current_action": 1}, [], result_chars, context_chars)
    second, _ = render(template, {**base, "current_action": 2}, [demo_step(DEMO_REPLIES[0], DEMO_RESULT)],
                       result_chars, context_chars)
    return [{"role": "user", "content": first}, {"role": "assistant", "content": json.dumps(DEMO_REPLIES[0])},
            {"role": "user", "content": second}, {"role": "assistant", "content": json.dumps(DEMO_REPLIES[1])}]


def build_messages(prompt: str, demo: list[dict] | None = None) -> list[dict]:
    """The conversation for one turn: the demonstration (if any), then the rendered prompt."""
    return [*(demo or []), {"role": "user", "content": prompt}]
