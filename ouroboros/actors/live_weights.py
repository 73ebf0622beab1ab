"""LiveWeights: which weights version the generators serve, for a generator that restarts.

Ray restarts a dead generator by running its constructor again, which loads the base model:
version 0. Without help it would then serve an old policy beside its peers until the next
broadcast. The driver sets the version it is about to broadcast here first, and a generator's
constructor loads whatever is set, so a generator that comes back mid-broadcast or mid-round
serves the live version before it takes its first call.

It is its own small threaded actor, not a method of the recorder or the learner: both hold
long calls (a round's records, an update), and a restarting generator must not wait behind
them while the agents wait on it.
"""
from __future__ import annotations

from ouroboros.types import WeightsRef


class LiveWeights:
    def __init__(self) -> None:
        self.weights: WeightsRef | None = None

    def set(self, weights: WeightsRef) -> int:
        """Make `weights` the version every generator should hold (its object stays referenced
        here, so a restarted generator can still fetch it)."""
        if self.weights is None or weights.version >= self.weights.version:
            self.weights = weights
        return self.weights.version

    def get(self) -> WeightsRef | None:
        return self.weights
