"""Environments: the kinds of episode a run trains on, each behind `envs/base.py`'s interface."""
from __future__ import annotations


def environment(cfg):
    """The environment `cfg.env.name` names. The one place a name becomes a class."""
    from ouroboros.envs.alignment.environment import AlignmentEnvironment
    from ouroboros.envs.experiment.environment import ExperimentEnvironment
    from ouroboros.envs.survival.environment import SurvivalEnvironment
    from ouroboros.envs.tasks.environment import TasksEnvironment

    classes = {c.name: c for c in (TasksEnvironment, ExperimentEnvironment, SurvivalEnvironment, AlignmentEnvironment)}
    return classes[cfg.env.name](cfg)
