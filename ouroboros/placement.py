"""Where each kind of actor runs on a Ray cluster: decided here, and nowhere else.

- **generators, sandbox runners, judges**: spread over the nodes (Ray's SPREAD strategy), so a
  round's generation, execs and judging use every node's cores, and losing one node loses a
  share of them, not all. A runner also needs a `sandbox` slot, which only nodes set up for
  sandboxes advertise (cluster/setup_node.sh; cluster/local_cluster.py).
- **the recorder, and actors that write the run directory themselves** (the experiment
  environment's agents keep each cycle's SQLite rows and git commits), and the live-weights
  record restarted generators read: on the driver's node, pinned. The run directory is on the driver's disk; nothing assumes another node has it.
- **the learner and the other agents**: wherever their resources fit (Ray's default).

On one machine every strategy lands on the one node, so a laptop run and a cluster run are the
same code with only `ray.address` changed.

Which actors survive their own death is decided here too. Generators, sandbox runners, judges
and agents are restarted by Ray (`ray.max_restarts` times) and the calls they had in flight are
retried on the new instance. That is safe because their calls are idempotent: a call's requests,
seeds and ids come with it, and its results go back by reference to the one writer (the
recorder), which keys every row by id. A restarted generator first loads the live weights
version (actors/live_weights.py). Actors whose calls write the run directory themselves (the
experiment agents' cycle rows and git commits) are not restarted, since a retried call would write
its cycle twice, and neither are the learner (its optimizer state) and the recorder (the writer).
Their death ends the run, and `ouroboros run --resume` carries on from the last finished round.
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
    "live-weights": DRIVER_NODE,  # small, and lost only with the driver's node
    "learner": ANYWHERE,
    "agent": ANYWHERE,
}


# Roles whose actors Ray restarts, their in-flight calls retried (the docstring says why).
RESTARTED = ("generator", "runner", "judge", "agent")
_max_restarts = 5


def configure(max_restarts: int) -> None:
    """The run's `ray.max_restarts`, set by the driver before it makes any actor."""
    global _max_restarts
    _max_restarts = max_restarts


def restarts(role: str, restartable: bool | None = None) -> dict:
    """Ray's restart options for an actor of `role`; `restartable` overrides the role's default
    for an actor whose own writes are idempotent (a judge keeping a content-keyed cache)."""
    if not (role in RESTARTED if restartable is None else restartable) or _max_restarts <= 0:
        return {}
    # -1: retry a call for as long as the actor can still be restarted.
    return {"max_restarts": _max_restarts, "max_task_retries": -1}


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
    # Named, not left out: a run inside a Ray Tune trial would otherwise put these actors in the
    # trial's placement group (Tune captures child actors), where their resources do not fit.
    return {"scheduling_strategy": "DEFAULT"}


def actor(cls, role: str, restartable: bool | None = None, **options):
    """`cls` as a Ray actor class with its resource `options`, its role's placement and restarts."""
    import ray

    again = restarts(role, restartable)
    remote_cls = ray.remote(**options, **strategy(role), **again)(cls)
    return _PinnedArgs(remote_cls) if again else remote_cls


# The constructor arguments of restartable actors, held by the driver until the run's actors stop.
_pinned: list = []


class _PinnedArgs:
    """A restartable actor class whose constructor arguments the driver keeps in the object store.

    Ray restarts an actor by running its constructor again with the same arguments. An argument
    Ray put in the object store by itself (anything over its inline limit, such as a judge's task
    set) is freed once the first construction has read it, and the restart then fails for want of
    it (ray-project/ray#53727). Put here, with the driver holding the reference, it stays.
    """

    def __init__(self, remote_cls) -> None:
        self._cls = remote_cls

    def remote(self, *args, **kwargs):
        return self._cls.remote(*[_pin(a) for a in args], **{k: _pin(v) for k, v in kwargs.items()})

    def options(self, **options) -> "_PinnedArgs":
        return _PinnedArgs(self._cls.options(**options))


def _pin(value):
    import ray

    # Scalars, names and handles travel inline; anything else may be big.
    if value is None or isinstance(value, (bool, int, float, str, ray.actor.ActorHandle, ray.ObjectRef)):
        return value
    ref = ray.put(value)
    _pinned.append(ref)
    return ref


def release_pinned() -> None:
    """Let the pinned arguments go (the run's actors are stopped)."""
    _pinned.clear()
