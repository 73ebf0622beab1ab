"""Fault injection: SIGKILL the driver at a named point of a round, for the resume tests.

`OUROBOROS_KILL_AT=ROUND:POINT` (POINT: rollout, learn, broadcast or between) kills the driver
process the moment it reaches that point, as the kernel's OOM killer or a lost machine would:
no handler runs, nothing is flushed or closed. tests/test_resume.py uses it to stop a run at
exact places and then resume it. Unset, it costs one dictionary lookup per point.
"""
from __future__ import annotations

import os
import signal

POINTS = ("rollout", "learn", "broadcast", "between")


def point(round_: int, name: str) -> None:
    """The driver has reached `name` of round `round_`: die here if told to."""
    want = os.environ.get("OUROBOROS_KILL_AT")
    if want and want == f"{round_}:{name}":
        os.kill(os.getpid(), signal.SIGKILL)
