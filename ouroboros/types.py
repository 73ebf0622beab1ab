"""The data that moves between actors.

Plain dataclasses: they pickle cheaply through the Ray object store and can be
built in tests without Ray. Records that land in Parquet shards carry an Arrow
schema next to them, so a shard's columns are declared in one place.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa


@dataclass
class Task:
    """One programming task with hidden tests; the model sees only `prompt`."""

    id: str
    split: str  # "train" or "heldout"
    prompt: str
    entry_point: str
    tests: list[str]
    reference: str = ""  # a known-good solution, used to check the tests themselves


@dataclass
class Request:
    """One prompt for a generator. `messages` are chat turns: {"role", "content"}."""

    id: str
    messages: list[dict[str, str]]
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    # The conversation this turn belongs to (an experiment, an episode). Stateless backends
    # ignore it; `scripted` replays its script from the start for each new session.
    session: str | None = None


@dataclass
class Completion:
    request_id: str
    text: str
    token_ids: list[int]
    logprobs: list[float]
    weights_version: int
    backend: str
    prompt_tokens: int = 0
    finish_reason: str = "stop"  # "stop" or "length"
    # The provider's own count, for backends that return text without token ids (APIs).
    output_tokens: int | None = None
    # The text carried a secret and was redacted (ouroboros/secrets.py); token ids were dropped.
    redacted: bool = False
    # Why the backend refused this one request (a prompt longer than the engine takes); its text is
    # empty and the rest of the batch was served.
    error: str = ""

    @property
    def completion_tokens(self) -> int:
        if self.output_tokens is not None:
            return self.output_tokens
        return len(self.token_ids)


@dataclass
class Action:
    """A parsed reply in the seed-000 protocol: {"action", "data", "notes"}."""

    name: str | None
    data: str
    notes: str
    valid: bool
    error: str = ""  # why the reply is not a valid action, for the store and the model


@dataclass
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool
    oom: bool
    duration_s: float
    truncated: bool
    error: str = ""  # a harness failure (sandbox could not start), never the program's own
    image: str = ""  # the image digest the program ran in, where the backend has images

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Step:
    """One turn of an episode: what was asked, what came back, what ran."""

    index: int
    request: Request
    completion: Completion
    action: Action
    result: ExecResult | None
    outcome: dict[str, Any] = field(default_factory=dict)  # environment facts (tests passed, ...)


@dataclass
class Trajectory:
    id: str
    task_id: str
    split: str
    round: int
    sample: int
    steps: list[Step]
    # The parameters the task was drawn with (experiment goals are drawn per round); not secret,
    # they are in the prompt. The answer never travels with the episode.
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Score:
    trajectory_id: str
    components: dict[str, float]
    total: float
    judge: str
    passed: bool = False  # the environment's own success: all hidden tests, the goal's answer
    # Per-teacher verdicts where several judges scored (alignment): judge, model, prompt hash, notes.
    details: list = field(default_factory=list)


@dataclass
class PreferencePair:
    id: str
    round: int
    task_id: str
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    chosen_reward: float
    rejected_reward: float
    chosen_trajectory: str
    rejected_trajectory: str


@dataclass
class Turn:
    """One policy turn to train on with a policy-gradient learner: the conversation it answered,
    the tokens the generator sampled with their log-probs, the version that made them, and the
    reward this turn earned (the environment's `turn_rewards`). Returns are discounted over the
    turns of one trajectory by the learner."""

    id: str  # "<trajectory id>#<step>"
    trajectory_id: str
    step: int
    round: int
    task_id: str
    prompt: list[dict[str, str]]
    token_ids: list[int]
    logprobs: list[float]
    weights_version: int
    reward: float
    episode_reward: float
    finish_reason: str = "stop"


@dataclass
class WeightsRef:
    """A published policy version.

    `ref` is the ObjectRef of one flat float32 buffer (or the buffer itself outside Ray);
    `index` says which tensor lives where in it (see ouroboros/weights.py).
    """

    version: int
    kind: str  # "lora" or "full"
    ref: Any
    checksum: str
    num_bytes: int
    base_model: str
    index: tuple = ()


# Arrow schemas of what goes into runs/<run id>/shards/round-NNNN/*.parquet.
COMPLETION_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("trajectory_id", pa.string()),
        ("step", pa.int32()),  # the turn within its episode (0 for one-reply tasks)
        ("round", pa.int32()),
        ("task_id", pa.string()),
        ("split", pa.string()),
        ("sample", pa.int32()),
        ("prompt", pa.string()),
        ("text", pa.string()),
        ("token_ids", pa.list_(pa.int32())),
        ("logprobs", pa.list_(pa.float32())),
        ("weights_version", pa.int32()),
        ("action_valid", pa.bool_()),
        ("action_error", pa.string()),
        ("exit_code", pa.int32()),
        ("tests_passed", pa.int32()),
        ("tests_total", pa.int32()),
        ("reward", pa.float32()),
    ]
)

PAIR_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("id", pa.string()),
        ("round", pa.int32()),
        ("task_id", pa.string()),
        ("prompt", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("chosen_reward", pa.float32()),
        ("rejected_reward", pa.float32()),
    ]
)

# One optimizer step of the learner (learner-steps.parquet), whichever algorithm made it; what
# an algorithm does not have is null.
LEARNER_STEP_FIELDS = ("step", "loss", "grad_norm", "learning_rate", "kl_ref", "clip_fraction", "rewards_margins",
                       "rewards_accuracies")
LEARNER_STEP_SCHEMA = pa.schema([("run_id", pa.string()), ("round", pa.int32()), ("step", pa.int64())]
                                + [(name, pa.float64()) for name in LEARNER_STEP_FIELDS[1:]])

# One row per trained turn (shards/round-NNNN/learner-turns.parquet): what the viewer overlays.
LEARNER_TURN_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("turn_id", pa.string()),
        ("trajectory_id", pa.string()),
        ("step", pa.int32()),
        ("round", pa.int32()),
        ("learner_step", pa.int32()),  # the optimizer step that first consumed it
        ("learner_version", pa.int32()),  # the version the learner held when it trained on it
        ("weights_version", pa.int32()),  # the version that generated it
        ("staleness", pa.int32()),
        ("reward", pa.float32()),  # as paid, after the reward guards
        ("raw_reward", pa.float32()),
        ("advantage", pa.float32()),
        ("tokens", pa.list_(pa.string())),  # each sampled token decoded alone, for the overlay
        ("generator_logprobs", pa.list_(pa.float32())),
        ("learner_logprobs", pa.list_(pa.float32())),
        ("clipped", pa.list_(pa.bool_())),  # tokens whose gradient the clip removed
        ("masked", pa.list_(pa.bool_())),  # tokens left out of the loss (past learner.max_length)
    ]
)
