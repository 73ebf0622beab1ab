"""Where each kind of actor runs on a Ray cluster: decided here, and nowhere else.

- **generators, sandbox runners, judges**: spread over the nodes (Ray's SPREAD strategy), so a
  round's generation, execs and judging use every node's cores, and losing one node loses a
  share of them, not all. A runner also needs a `sandbox` slot, which only nodes set up for
  sandboxes advertise (cluster/setup_node.sh; cluster/local_cluster.py).
- **the recorder, and actors that write the run directory themselves** (the experiment
  environment's agents keep each cycle's SQLite rows and git commits): on the driver's node,
  pinned. The run directory is on the driver's disk; nothing assumes another node has it.
- **the learner and the other agents**: wherever their resources fit (Ray's default).

On one machine every strategy lands on the one node, so a laptop run and a cluster run are the
same code with only `ray.address` changed.
"""
from __future__ import annotations

SPREAD = "spread"
DRIVER_NODE = "driver-node"
ANYWHERE = "anywhere"

ROLES = {
    "generator": SPREAD,
    "runner": SPREAD,
    "judge": SPREAD,
    "recorder": DRIVER_NODE,
    "run-dir-writer": DRIVER_NODE,
    "learner": ANYWHERE,
    "agent": ANYWHERE,
}


def strategy(role: str) -> dict:
    """The Ray scheduling options of an actor of `role`."""
    where = ROLES[role]
    if where == SPREAD:
        return {"scheduling_strategy": "SPREAD"}
    if where == DRIVER_NODE:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # soft=False: if the driver's node cannot take it, fail at once rather than write
        # the run's files on another machine's disk.
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(),
                                                                      soft=False)}
    return {}


def actor(cls, role: str, **options):
    """`cls` as a Ray actor class with its resource `options` and its role's placement."""
    import ray

    return ray.remote(**options, **strategy(role))(cls)
