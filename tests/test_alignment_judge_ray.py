"""The judge pool over real Ray actors: a judge actor that dies fails its candidates (recorded as
judge failures, trained on by nothing), and scoring goes on."""
from __future__ import annotations

import pytest

from ouroboros.actors.alignment_judge import AlignmentJudge, JudgeWorker
from ouroboros.config import Config
from ouroboros.envs.alignment.environment import AlignmentEnvironment
from ouroboros.envs.alignment.tasks import AlignTask
from ouroboros.types import Action, Completion, Request, Step, Trajectory

ray = pytest.importorskip("ray")


def traj(i: int, text: str) -> Trajectory:
    c = Completion(f"c{i}", text, [1], [0.0], 0, "test")
    return Trajectory(f"c{i}", "t1", "train", 1, i, [Step(0, Request(f"c{i}", []), c, Action("answer", text, "", True),
                                                          None)])


def _wait_dead(actor, seconds: float = 30) -> None:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return
        except ray.exceptions.GetTimeoutError:
            continue
        time.sleep(0.1)
    raise AssertionError("the killed judge actor still answers")


def test_a_dead_judge_actor_fails_its_candidates_and_scoring_goes_on():
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        cfg = Config.model_validate({"align": {"judges": [
            {"name": "rules", "kind": "rules"},
            {"name": "s", "backend": "scripted", "mode": "json", "retries": 0,
             "script": ['{"id": "{nonce}", "helpful": 5, "honest": 5, "persona": 5}']}]}})
        actor = ray.remote(num_cpus=0)(JudgeWorker).remote(cfg.align.judges[1], cfg.align.rubric, cfg)
        task = AlignTask(id="t1", split="train", kind="labyrinth", prompt="How long is the bridge?",
                         dialog_id="engineer-01", terms=["412 metres"], prompt_id=0)
        pool = AlignmentJudge(cfg, [task], "run1", {"s": [actor]})
        alive = pool.score([traj(0, "It is 412 metres.")])
        assert alive[0].components["judge_failed"] == 0.0 and alive[0].components["ai.s"] == 1.0
        ray.kill(actor, no_restart=True)
        _wait_dead(actor)  # ray.kill only sends the kill: a call right after it can still be answered
        dead = pool.score([traj(1, "The bridge is 412 metres long.")])
        failure = next(d for d in dead[0].details if d["judge"] == "s")["failed"]
        assert dead[0].components["judge_failed"] == 1.0 and "Actor" in failure
        assert not AlignmentEnvironment(cfg).trains_on(dead[0])
    finally:
        ray.shutdown()
