"""Ouroboros: self-improving LLM loops on a Ray cluster."""
import os as _os

# torch's OpenMP threads spin on their core for a while after each parallel region (libgomp's
# default wait policy). A run's generators, learner, judges and sandboxes share the cores, so a
# spinning thread holds the core another process is waiting for: on 2 busy cores the tiny model
# generated 4-5 times slower (benchmarks/README, "OpenMP threads that sleep"). PASSIVE has them
# sleep instead. libgomp reads it once, when torch loads it, which every process of ours does
# after importing this package. A user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
