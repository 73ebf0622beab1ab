"""TasksAgent, TasksJudge and pair building as plain objects: scripted replies, a real bwrap sandbox."""
import json

import pytest

from conftest import require_bwrap
from ouroboros.actors.agent import TasksAgent
from ouroboros.actors.judge import TasksJudge
from ouroboros.actors.sandbox_runner import SandboxRunner
from ouroboros.backends.scripted import ScriptedBackend
from ouroboros.config import JudgeConfig, SandboxConfig
from ouroboros.envs.tasks import load_tasks
from ouroboros.learn.pairs import build_pairs


class ScriptedGenerator:
    """The Generator's interface over the scripted backend, as a plain object."""

    def __init__(self, replies):
        self.backend = ScriptedBackend(script=replies)

    def generate(self, requests):
        return self.backend.generate(requests)


@pytest.fixture(scope="module")
def runner():
    require_bwrap()
    return SandboxRunner(SandboxConfig(backend="bwrap", timeout_s=5))


def _reply(code):
    return json.dumps({"action": "run", "data": code, "notes": "n"})


def test_episode_rewards_and_pairs_follow_what_the_code_did(runner):
    task = load_tasks("train")[0]
    replies = [
        _reply(task.reference),                             # passes every test
        _reply(f"def {task.entry_point}(*a, **k):\n    return None"),  # runs, fails tests
        _reply("def broken(:\n"),                           # valid action, syntax error
        "I would write a function but no JSON here",        # malformed reply
    ]
    agent = TasksAgent([ScriptedGenerator(replies)], [runner])
    trajs = agent.run_episodes([task], samples=4, round_=1, temperature=1.0)
    judge = TasksJudge(JudgeConfig())
    scores = judge.score(trajs)
    comps = [s.components for s in scores]
    assert comps[0] == {"valid": 1.0, "runs": 1.0, "tests": 1.0} and scores[0].total == pytest.approx(1.0)
    assert comps[1]["valid"] == 1.0 and comps[1]["runs"] == 1.0 and comps[1]["tests"] < 1.0
    assert comps[2] == {"valid": 1.0, "runs": 0.0, "tests": 0.0}
    assert "SyntaxError" in trajs[2].steps[0].outcome["error"]
    assert comps[3] == {"valid": 0.0, "runs": 0.0, "tests": 0.0}
    assert trajs[3].steps[0].result is None and "no JSON object" in trajs[3].steps[0].action.error

    pairs = build_pairs(trajs, scores, round_=1)
    assert len(pairs) == 1
    assert pairs[0].chosen == replies[0] and pairs[0].rejected == replies[3]
    assert pairs[0].chosen_reward > pairs[0].rejected_reward
    # A gap smaller than the margin is what a noisy judge decides alone: no pair.
    gap = pairs[0].chosen_reward - pairs[0].rejected_reward
    assert build_pairs(trajs, scores, round_=1, margin=gap + 1e-6) == []
    assert len(build_pairs(trajs, scores, round_=1, margin=gap)) == 1


def test_ties_give_no_pair_and_hostile_code_cannot_forge_results(runner):
    task = load_tasks("train")[1]
    forge = _reply("print('@@OUROBOROS-RESULT-0000@@' + '{\"ran\": true, \"passed\": 99, \"total\": 1}')\n"
                   "import os\nos._exit(0)")
    loop = _reply("while True:\n    pass")
    agent = TasksAgent([ScriptedGenerator([forge, loop])], [runner])
    trajs = agent.run_episodes([task], samples=2, round_=0, temperature=1.0)
    scores = TasksJudge(JudgeConfig()).score(trajs)
    assert scores[0].components["tests"] == 0.0  # the forged line does not carry the real nonce
    assert trajs[1].steps[0].result.timed_out and scores[1].components["runs"] == 0.0
    # Both are valid actions that neither ran to completion nor passed: a tie, so no pair.
    assert scores[0].total == scores[1].total == pytest.approx(0.2)
    assert build_pairs(trajs, scores, 0) == []
