"""Configuration: pydantic models for configs/*.yaml.

The YAML key, the field and its help text are one thing. Every section forbids
unknown keys, so a typo is an error that names the key rather than a silently
ignored setting.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config problem a user can fix. str() is one line naming key, value and expectation."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(Section):
    name: str = Field("ouroboros", description="Name recorded in the runs table.")
    seed: int = Field(0, description="Seed for task sampling, generation and training.")
    rounds: int = Field(5, ge=0, description="Learning rounds after the round-0 evaluation of the base model.")
    time_budget_s: float | None = Field(
        None, gt=0, description="Start no new round after this many seconds (the round in progress finishes); "
                                "None: run every round.")
    async_: bool = Field(
        False, alias="async", description="Overlap rounds: rollouts of round r+1 run on the version trained so far "
                                          "while the learner trains on round r (samples up to learner.max_staleness "
                                          "versions old, importance-corrected).")
    out: str = Field("runs/latest", description="Run directory: ouroboros.db, shards/, summary.json.")


class PolicyConfig(Section):
    model: str = Field(
        "smollm2-135m-instruct",
        description="Packaged name (smollm2-135m-instruct, tiny-smollm2), a Hugging Face id or a local path.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype on load.")


class ApiConfig(Section):
    model: str = Field("", description="Provider model name, e.g. claude-sonnet-4-5 or gpt-4o-mini.")
    base_url: str | None = Field(None, description="Override the provider endpoint (a proxy, or a test server).")
    api_key_env: str | None = Field(None, description="Environment variable holding the key; provider default if unset.")
    max_retries: int = Field(4, ge=0, description="SDK retries on rate limits and 5xx errors.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")


class VLLMConfig(Section):
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Engine dtype; auto follows policy.dtype.")
    max_model_len: int | None = Field(
        4096, ge=64, description="Prompt plus reply tokens per sequence; longer prompts are refused one by one. "
                                 "None: the model's own limit.")
    kv_cache_gb: float = Field(
        4.0, gt=0, description="CPU hosts: memory for the KV cache per engine, in GiB (VLLM_CPU_KVCACHE_SPACE).")
    gpu_memory_utilization: float = Field(
        0.5, gt=0, le=1, description="GPU hosts: share of the GPU's memory the engine takes (weights and KV cache).")
    enforce_eager: bool = Field(True, description="Run the model eagerly (no CUDA graphs / compilation warm-up).")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine spans (GPU nodes only).")
    max_num_seqs: int = Field(256, ge=1, description="Sequences the engine decodes at once.")
    lora_sync: Literal["merge", "adapter"] = Field(
        "merge", description="How LoRA versions go live: merged into the weights and reloaded (fastest sampling "
                             "on CPU), or as engine adapters (fastest sync); README: vLLM generators.")
    multiprocess: bool = Field(
        False, description="Run the engine core in a child process (asynchronous scheduling) instead of in the "
                           "Generator actor (zero-copy weight loads); README: vLLM generators.")


class HumanConfig(Section):
    console_dir: str | None = Field(None, description="Where the human backend asks and `ouroboros view` answers; "
                                                      "default <run.out>/console.")
    timeout_s: float = Field(3600.0, gt=0, description="Longest the human backend waits for an answer.")


class GeneratorConfig(Section):
    backend: Literal["hf", "vllm", "scripted", "anthropic", "openai", "human"] = Field(
        "hf", description="Model backend: hf (transformers), vllm (a vLLM engine), scripted (replays), anthropic, "
                          "openai, human (a person answers in `ouroboros view`'s console).")
    count: int = Field(1, ge=1, description="Number of Generator actors.")
    num_cpus: float = Field(1, ge=0, description="Ray CPUs reserved per generator.")
    num_gpus: float = Field(0, ge=0, description="GPU fraction per generator where there is one.")
    threads: int = Field(2, ge=1, description="torch threads per generator process.")
    max_batch: int = Field(32, ge=1, description="hf: largest batch one generate call runs at once (vllm batches continuously).")
    concurrency: int = Field(
        64, ge=1, description="Calls a generator takes at once; hf coalesces them into batches, vllm adds them to the "
                  "engine's running batch.")
    max_new_tokens: int = Field(192, ge=1, description="Tokens generated per completion at most.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature for training rollouts.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling for training rollouts.")
    eval_temperature: float = Field(0.0, ge=0, description="Held-out evaluation temperature; 0 is greedy.")
    script: list[str] = Field(default_factory=list, description="Replies the scripted backend replays in order.")
    script_file: str | None = Field(None, description="JSONL of replies (a 'text' field each) for the scripted backend.")
    api: ApiConfig = Field(default_factory=ApiConfig, description="Settings of the anthropic and openai backends.")

    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="Settings of the vllm backend.")
    human: HumanConfig = Field(default_factory=HumanConfig, description="Settings of the human backend.")
    sync_timeout_s: float = Field(
        120.0, gt=0, description="Longest a weights load may take on one generator (it waits for requests in "
                                 "flight on a full load) before the run stops with an error.")
    weights_transport: Literal["store", "gloo", "nccl"] = Field(
        "store", description="How a new version reaches the generators: Ray's object store (zero copy on one node), "
                             "or a broadcast from the learner over a gloo (TCP) or nccl (GPU to GPU, one GPU per "
                             "rank) process group; README: vLLM generators.")

    @model_validator(mode="after")
    def _transport_fits(self):
        if self.weights_transport != "store" and self.backend not in ("hf", "vllm"):
            raise ValueError(f"generator.weights_transport {self.weights_transport!r} carries weights to local "
                             f"models (hf, vllm); the {self.backend} backend loads none: set it to store")
        if self.weights_transport == "nccl" and not self.num_gpus:
            raise ValueError("generator.weights_transport 'nccl' moves weights GPU to GPU and generator.num_gpus "
                             "is 0: give each generator a GPU, or use gloo or store")
        return self


class SandboxConfig(Section):
    backend: Literal["bwrap", "docker", "process"] = Field(
        "bwrap", description="Sandbox backend for model-written code: bwrap (default), docker, or process (unsafe)."
    )
    runners: int = Field(2, ge=1, description="SandboxRunner actors; each takes one unit of the 'sandbox' resource.")
    concurrency: int = Field(1, ge=1, description="Execs (and experiment sessions) each runner runs at once.")
    warm: bool = Field(True, description="bwrap sessions fork each program from a warm interpreter (sandbox/warm.py).")
    spares: int = Field(
        2, ge=0, description="Fresh, never-used sandboxes each runner keeps started for the next sessions to open.")
    unsafe: bool = Field(False, description="Required for the 'process' backend, which does not isolate.")
    timeout_s: float = Field(5.0, gt=0, description="Wall time per exec; the whole process tree is killed.")
    memory_mb: int = Field(512, ge=16, description="Memory per exec (container); going over is reported as oom.")
    pids: int = Field(64, ge=1, description="Process and thread limit per exec.")
    output_bytes: int = Field(1 << 20, ge=1024, description="Captured bytes per stream; the rest is dropped.")
    disk_mb: int = Field(256, ge=1, description="Data an experiment may write into its workdir (and the largest file).")
    cpus: float = Field(1.0, gt=0, description="CPU share per exec, in cores.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Plain settings passed into the sandbox as environment variables; stored with the run's config, "
                    "so never a credential (use env_from).")
    env_from: dict[str, str] = Field(
        default_factory=dict,
        description="Credentials passed into the sandbox: {SANDBOX_VAR: HOST_VAR}, the value read from the host "
                    "variable where the sandbox runs. Only the names are stored; the values are redacted from "
                    "everything a run writes.")
    network: bool = Field(False, description="Give sandboxed programs a network (off: no interface but loopback).")
    image: str = Field("ouroboros-sandbox:base", description="docker: the base image (cluster/build_sandbox_image.sh).")
    gpus: int = Field(0, ge=-1, description="docker: GPUs to request per container (-1: all).")
    build_timeout_s: float = Field(600.0, gt=0, description="docker: time limit for building a Dockerfile.")
    build_memory_mb: int = Field(2048, ge=64, description="docker: memory limit for a build's RUN steps.")
    build_network: bool = Field(False, description="docker: let builds use the network (off: --network none).")
    keep_images: int = Field(
        5, ge=1, description="docker: environments (built images) a run keeps; after each build the oldest beyond "
                             "this are removed, unless a container uses them.")


    @field_validator("env")
    @classmethod
    def _no_credentials_in_env(cls, env: dict[str, str]) -> dict[str, str]:
        from ouroboros.secrets import looks_like_credential

        for name in env:
            if looks_like_credential(name):
                raise ValueError(
                    f"{name!r} looks like a credential, and sandbox.env values are stored with the run's config: "
                    f"export its value in a host variable and name it instead, sandbox.env_from: {{{name}: HOST_VAR}}")
        return env

    @field_validator("env_from")
    @classmethod
    def _names_only(cls, env_from: dict[str, str]) -> dict[str, str]:
        for inner, host in env_from.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", inner) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", host):
                raise ValueError(f"{inner!r}: {host!r}: both must be environment variable names (the value is read "
                                 "from the host variable, never written here)")
        return env_from


class ExperimentJudgeConfig(Section):
    """The experiment judge's weights (they must sum to 1, so rewards compare across configs).
    Only `answer` says the goal was reached; the rest pay for the form of the work, so that a
    policy that cannot answer yet still gets a gradient toward running code and finalizing."""

    valid_weight: float = Field(0.1, ge=0, description="Reward times the share of replies that were valid actions.")
    runs_weight: float = Field(0.2, ge=0, description="Reward times the share of run actions that exited cleanly.")
    finalized_weight: float = Field(
        0.2, ge=0, description="Reward for ending with finalize (after at least one run), not a limit or a crash.")
    answer_weight: float = Field(
        0.5, ge=0, description="Reward when the conclusion states one number, the question's answer, and a clean run "
                               "of the episode printed it (README: Experiments as a learning environment).")
    reference_timeout_s: float = Field(
        60.0, gt=0, description="Wall time for one run of a goal's reference program, which the judge runs in the "
                                "sandbox to learn an instance's answer (generous: rounds run it on a busy host).")

    @model_validator(mode="after")
    def _weights_sum_to_one(self):
        total = self.valid_weight + self.runs_weight + self.finalized_weight + self.answer_weight
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"valid_weight + runs_weight + finalized_weight + answer_weight must sum to 1, "
                             f"got {total:g}")
        return self


class JudgeConfig(Section):
    valid_weight: float = Field(0.2, ge=0, description="tasks: reward for a reply that parses as a valid run action.")
    runs_weight: float = Field(0.3, ge=0, description="tasks: reward for code that executes without error.")
    tests_weight: float = Field(0.5, ge=0, description="tasks: reward times the fraction of hidden tests passed.")
    experiment: ExperimentJudgeConfig = Field(
        default_factory=ExperimentJudgeConfig, description="Weights of the experiment environment's judge.")


class LearnerConfig(Section):
    algorithm: Literal["dpo", "grpo", "ppo", "reinforce"] = Field(
        "dpo", description="Policy update: dpo (TRL, on preference pairs), or a policy gradient on each turn's "
                           "sampled tokens: grpo (group-normalized advantages), ppo (value head, GAE) or "
                           "reinforce (discounted returns less a baseline).")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], description="Modules LoRA adapts."
    )
    learning_rate: float = Field(2e-4, gt=0, description="AdamW learning rate (kept across rounds).")
    beta: float = Field(0.1, gt=0, description="DPO temperature beta.")
    pair_margin: float = Field(0.0, ge=0, description="dpo: the least reward gap between a pair's chosen and "
                                                      "rejected; a smaller gap is judge noise, not a preference.")
    length_desensitize: float | None = Field(
        None, ge=0, le=1, description="dpo: the weight of each reply's tokens past the shorter reply's length in "
                                      "its log-prob (LD-DPO); below 1 a pair teaches less by length alone, "
                                      "either way. Unset: every token counts (plain DPO).")
    batch_size: int = Field(8, ge=1, description="Pairs (dpo) or turns (policy gradients) per optimizer step.")
    epochs: int = Field(2, ge=1, description="Passes over each round's pairs or turns.")
    max_length: int = Field(768, ge=32, description="Prompt plus completion tokens kept per pair or turn.")
    publish: Literal["lora", "full"] = Field(
        "lora", description="What a new version sends to generators: the adapter, or merged full weights.")
    threads: int = Field(2, ge=1, description="torch threads in the learner process.")
    num_gpus: float = Field(0, ge=0, description="GPUs for the learner where there are some.")
    # -- policy gradients --------------------------------------------------------------
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = Field(
        "grpo", description="Token averaging of the policy loss (as TRL): grpo (per sequence, then batch), dr_grpo "
                            "(sum over max_new_tokens per sequence, and unscaled group advantages), dapo (per token "
                            "over the round).")
    clip_eps_low: float = Field(0.2, gt=0, lt=1, description="Ratio clip below 1 (PPO's epsilon).")
    clip_eps_high: float = Field(0.2, gt=0, description="Ratio clip above 1 (DAPO raises it, e.g. 0.28).")
    gamma: float = Field(0.99, ge=0, le=1, description="Discount of rewards over an episode's turns.")
    gae_gamma: float = Field(1.0, ge=0, le=1, description="ppo: discount over a turn's tokens in GAE.")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="ppo: GAE lambda.")
    critic: Literal["head", "none"] | None = Field(
        None, description="Value-head source: head (a linear value head on the LoRA policy's last hidden state) or "
                          "none. Unset: head for ppo and for reinforce with baseline critic, none otherwise.")
    value_coef: float = Field(0.1, ge=0, description="Weight of the value loss (ppo, and the reinforce critic).")
    value_clip: float = Field(0.2, gt=0, description="ppo: how far a value may move from its old estimate.")
    baseline: Literal["mean", "rloo", "critic"] = Field(
        "rloo", description="reinforce: what is subtracted from each return: the batch mean, the mean of the other "
                            "samples of the same task (leave one out), or the value head.")
    kl_coef: float = Field(0.0, ge=0, description="Weight of the KL to the reference (the base model); 0 skips the "
                                                  "reference pass.")
    kl_estimator: Literal["k1", "k3"] = Field("k3", description="Per-token KL estimator.")
    kl_mode: Literal["loss", "reward"] = Field(
        "loss", description="KL as a loss term, or as a per-token penalty in the reward (ppo).")
    reward_bound: tuple[float, float] | None = Field(
        (0.0, 1.0), description="Reward guard: each turn's reward is held in [low, high] (null: unbounded). The "
                                "share of rewards that hit the bound is reported per round.")
    reward_bound_mode: Literal["clip", "tanh"] = Field("clip", description="Cut at the bound, or squash smoothly.")
    reward_shaping: Literal["none", "reference"] = Field(
        "none", description="reference: each return less the mean return the oldest policy seen on the task earned "
                            "(reference-relative shaping: pays improvement over the reference, not the judge's scale).")
    is_cap: float = Field(2.0, ge=1, description="Truncated importance sampling: the cap on pi_learner/pi_generator.")
    max_staleness: int = Field(1, ge=0, description="Versions a sample may lag the learner and still be trained on "
                                                    "(with importance correction); older ones are dropped.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient norm clip per optimizer step.")
    # -- hardware ------------------------------------------------------------------------
    bf16: bool | None = Field(None, description="Train in bfloat16 autocast; unset: on a GPU only.")
    gradient_checkpointing: bool | None = Field(None, description="Recompute activations in the backward pass; "
                                                                  "unset: on a GPU only.")
    quantize: Literal["none", "4bit"] = Field(
        "none", description="4bit: QLoRA, the frozen base in 4-bit NF4 through bitsandbytes (GPU only).")

    @model_validator(mode="after")
    def _settings_agree(self):
        if self.reward_bound is not None and not self.reward_bound[0] < self.reward_bound[1]:
            raise ValueError(f"learner.reward_bound {list(self.reward_bound)} must be [low, high] with low < high")
        if self.critic == "none" and self.algorithm == "ppo":
            raise ValueError("learner.critic 'none' with learner.algorithm 'ppo': PPO needs a value head; "
                             "set critic: head, or leave it unset")
        if self.critic == "none" and self.algorithm == "reinforce" and self.baseline == "critic":
            raise ValueError("learner.critic 'none' with learner.baseline 'critic': the baseline needs a value head; "
                             "set critic: head, or leave it unset")
        if self.quantize == "4bit" and not self.num_gpus:
            raise ValueError("learner.quantize '4bit' (QLoRA) runs on a GPU only and learner.num_gpus is 0: "
                             "give the learner a GPU (learner.num_gpus: 1), or set quantize: none")
        return self

    @property
    def value_head(self) -> bool:
        """Whether the learner trains a value head."""
        if self.critic is not None:
            return self.critic == "head" and self.algorithm in ("ppo", "reinforce")
        return self.algorithm == "ppo" or (self.algorithm == "reinforce" and self.baseline == "critic")


class SurvivalConfig(Section):
    max_steps: int = Field(20, ge=1, le=1000, description="Steps an episode may live; reaching them is survival.")
    step_timeout_s: float = Field(5.0, gt=0, le=600,
                                  description="Wall time one step's code may run (model calls excluded); past it the "
                                              "object is dead (a hang).")
    max_llm_calls: int = Field(4, ge=0, le=100, description="self.call_llm calls an episode may make; one more is "
                                                             "harmful and stops it.")
    max_llm_tokens: int = Field(1024, ge=0, description="Model tokens an episode's self.call_llm calls may use in all.")
    llm_time_s: float = Field(120.0, gt=0, description="Model time an episode's self.call_llm calls may use in all.")
    step_reward: float = Field(1.0, description="Reward of a surviving step whose code does something.")
    penalty: float = Field(-1000.0, le=0, description="Reward of the step that dies or does harm (the learner's "
                                                      "learner.reward_bound, if set, bounds it).")
    cpu_s: int = Field(60, ge=1, description="CPU seconds an episode's process may use in all.")
    output_bytes: int = Field(65536, ge=1024, description="Output an episode may print in all; more ends it.")
    kickoffs_file: str | None = Field(
        None, description="Your own kickoff prompts: JSONL of {id, split, prompt} as the bundled "
                          "ouroboros/envs/survival/data/kickoffs.jsonl; None uses the bundled ones.")


class JudgeSpec(Section):
    """One judge of the alignment environment's pool: a model that scores by rubric (a local
    policy-sized model, a vLLM engine, Claude or GPT through their SDKs, or a scripted replay in
    tests), or the rule checks."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Name recorded with every score it gives.")
    kind: Literal["model", "rules"] = Field("model", description="model: a rubric prompt to a model; rules: the "
                                                                 "rule checks (facts, persona constraints, safety).")
    backend: Literal["hf", "vllm", "scripted", "anthropic", "openai"] = Field(
        "hf", description="model judges: the backend that runs the judge model.")
    model: str = Field("smollm2-135m-instruct", description="hf/vllm: the judge model (packaged name, Hugging Face id "
                                                            "or path); anthropic/openai: set api.model instead.")
    mode: Literal["json", "logprob"] = Field(
        "json", description="json: the judge replies with a JSON score object (parsed, repaired, retried); logprob "
                            "(hf only): the expected rating under the judge's next-token distribution over 1..5, "
                            "which never fails to parse.")
    weight: float = Field(1.0, ge=0, description="Weight of this judge among the AI teachers.")
    count: int = Field(1, ge=1, description="Judge actors of this kind; candidates are spread over them.")
    retries: int = Field(2, ge=0, description="Re-asks after a reply that is not a valid score; then the candidate "
                                              "is recorded as a judge failure (never a 0).")
    requests_per_minute: float | None = Field(None, gt=0, description="API judges: client-side rate limit per actor.")
    max_new_tokens: int = Field(96, ge=8, description="Tokens per judge reply (json mode).")
    script: list[str] = Field(default_factory=list, description="scripted: the replies to replay.")
    api: ApiConfig = Field(default_factory=ApiConfig, description="anthropic/openai judges: model, endpoint, key "
                                                                  "variable, retries.")
    num_cpus: float = Field(1, ge=0, description="Ray CPUs per judge actor.")
    threads: int = Field(1, ge=1, description="hf judges: torch threads per judge actor.")


class RlaifConfig(Section):
    """The constitution (RLAIF): self-critique, revise, prefer-best, guided by written principles."""

    enabled: bool = Field(False, description="Critique and revise each train candidate by the constitution.")
    principles: list[str] = Field(
        default_factory=lambda: ["Be helpful and honest; cite uncertainty.",
                                 "Refuse harmful requests with a brief explanation."],
        description="The constitution's principles, shown to the critic and the reviser.")
    critique_chain: int = Field(1, ge=0, le=8, description="Critique -> revise passes per candidate.")
    judge_model: str = Field("", description="The judge (a name in align.judges) that picks the better of original "
                                             "and revision, in both orders; empty: the first model judge.")


class AlignConfig(Section):
    """The alignment loop: data files, judges, guards, replay and evaluation."""

    data_dir: str = Field("runs/align-data", description="Where the stages read and write dialogs.jsonl, "
                                                         "summaries.jsonl, labyrinth.jsonl, candidates.jsonl, "
                                                         "scores.jsonl.")
    dialogs_file: str | None = Field(None, description="Dialogs (JSONL); None: data_dir's, else the bundled set.")
    summaries_file: str | None = Field(None, description="Summaries (JSONL); None: data_dir's, else the bundled set.")
    labyrinth_file: str | None = Field(None, description="Labyrinth prompts (JSONL); None: data_dir's, else made by "
                                                         "rule from the summaries.")
    human_scores_file: str | None = Field(None, description="Scores with rater human (JSONL) to join as the human "
                                                            "teacher; None: the rater-human lines of data_dir's "
                                                            "scores.jsonl, if any.")
    eval_file: str | None = Field(None, description="Held-out evaluation prompts (JSONL as the bundled eval.jsonl); "
                                                    "None: the bundled set.")
    transforms: list[Literal["rephrase", "adversarial", "contrastive"]] = Field(
        default_factory=lambda: ["rephrase", "adversarial", "contrastive"],
        description="Labyrinth transforms made from each summary.")
    model_transforms: bool = Field(True, description="align labyrinth: the model writes each transform (rule-made "
                                                     "when its reply does not parse).")
    safety_prompts: bool = Field(True, description="Train on the bundled harmful/benign prompts too.")
    rubric: dict[str, str] = Field(
        default_factory=lambda: {"helpful": "answers what was asked, using the facts given",
                                 "honest": "states the facts correctly and disagrees politely with a wrong claim",
                                 "persona": "keeps the persona's voice and every one of its constraints"},
        description="Named criteria the model judges rate from 1 to 5.")
    judges: list[JudgeSpec] = Field(
        default_factory=lambda: [JudgeSpec(name="rules", kind="rules"),
                                 JudgeSpec(name="smollm2", mode="logprob")],
        description="The judge pool (the training judge).")
    teacher_weights: dict[Literal["human", "ai", "rules"], float] = Field(
        default_factory=lambda: {"human": 2.0, "ai": 1.0, "rules": 1.0},
        description="Multi-teacher aggregation: weight of each kind of teacher.")
    disagreement: float = Field(0.4, ge=0, le=1, description="Teachers further apart than this (0-1 scale) make a "
                                                             "hard case.")
    hard_score: float = Field(0.35, ge=0, le=1, description="A candidate scored below this is a hard case.")
    length_penalty: float = Field(0.5, ge=0, description="Length control: reward less this times the share by which "
                                                         "an answer exceeds its word limit (the persona's, else "
                                                         "max_words).")
    max_words: int = Field(120, ge=10, description="Word limit where the persona sets none.")
    replay_size: int = Field(64, ge=0, description="Hard cases kept in the replay buffer.")
    replay_share: float = Field(0.25, ge=0, le=1, description="Share of a round's prompts drawn from replay.")
    clusters: int = Field(4, ge=1, description="Failure clusters formed from each round's hard cases.")
    cache: bool = Field(True, description="Cache judge verdicts by (judge, its prompt, rubric, prompt, candidate).")
    eval_judges: list[JudgeSpec] = Field(
        default_factory=lambda: [JudgeSpec(name="eval-rules", kind="rules"),
                                 JudgeSpec(name="eval-smollm2", mode="logprob")],
        description="align eval: the judges of the pairwise win rate (not the training judge: another prompt, "
                    "pairwise instead of rubric).")
    eval_samples: int = Field(1000, ge=100, description="Bootstrap resamples of each evaluation interval.")
    baseline_version: int = Field(0, ge=0, description="align eval: the version the last one is compared with.")
    distiller: str = Field("policy", description="Who distills dialogs: policy, or the name of a model judge.")
    dialogue_model: str = Field("policy", description="Who answers in align dialogue: policy, or the name of a "
                                                      "model judge (an API model).")


    @model_validator(mode="after")
    def _judges_agree(self):
        if not self.rubric:
            raise ValueError("align.rubric is empty: name at least one criterion the model judges rate "
                             "(for example helpful: answers what was asked)")
        blank = [k for k in self.rubric if not str(k).strip()]
        if blank:
            raise ValueError("align.rubric: a criterion's name is blank; give each criterion a name")
        for key, judges in (("judges", self.judges), ("eval_judges", self.eval_judges)):
            names = [j.name for j in judges]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"align.{key}: judge names must be unique, {', '.join(dupes)} repeats")
            for j in judges:
                if j.kind == "model" and j.mode == "logprob" and j.backend != "hf":
                    raise ValueError(f"align.{key}: judge {j.name!r} has mode logprob, which reads a local model's "
                                     f"next-token probabilities: use backend hf, or mode json for {j.backend!r}")
            if not judges:
                raise ValueError(f"align.{key} is empty: name at least one judge (kind rules needs no model)")
        models = [j.name for j in self.judges if j.kind == "model"]
        for key in ("distiller", "dialogue_model"):
            value = getattr(self, key)
            if value != "policy" and value not in models:
                raise ValueError(f"align.{key} {value!r} must be 'policy' or the name of a model judge in align.judges "
                                 f"({', '.join(models) or 'none'})")
        return self


class EnvConfig(Section):
    name: Literal["tasks", "experiment", "survival", "alignment"] = Field(
        "tasks", description="Environment the agents run: tasks (one reply, hidden tests), experiment (experiment "
                             "cycles on computational questions drawn anew each round, judged on the answer a run "
                             "computes; the `experiment` section applies), or survival (an object that runs the "
                             "policy's replies as code on itself, paid for each step it survives; `env.survival`), or "
                             "alignment (answers to labyrinth prompts made from dialogs, scored by a pool of judges; "
                             "the `align` and `rlaif` sections).")
    survival: SurvivalConfig = Field(default_factory=SurvivalConfig)
    agents: int = Field(2, ge=1, description="Agent actors running episodes in parallel.")
    train_tasks_per_round: int = Field(8, ge=1, description="Train tasks (experiment: goals) sampled each round.")
    samples_per_task: int = Field(4, ge=2, description="Episodes per train task; pairs need two or more.")
    heldout_tasks: int = Field(0, ge=0, description="Held-out tasks (goals) evaluated each round; 0 means all.")
    heldout_samples: int = Field(1, ge=1, description="Episodes per held-out task in each round's evaluation "
                                                      "(more give tighter intervals; sampled unless "
                                                      "generator.eval_temperature is 0).")
    tasks_file: str | None = Field(
        None, description="tasks: your own task set, JSONL as the bundled one (README: Bring your own tasks); "
                          "refused at start if a line, a test or a reference (run in the sandbox) fails.")
    human_ratings: Literal["annotate", "pairs"] = Field(
        "annotate", description="What the viewer's ratings of this run's answers do: annotate (stored in the run's "
                                "human inbox beside the run, for reading) or pairs (each pairwise preference also "
                                "joins the next round's DPO batch, once). The alignment environment always uses them.")
    goals_file: str | None = Field(
        None, description="experiment: a JSONL file of your own research goals, in the bundled format "
                          "(ouroboros/envs/experiment/data/goals.jsonl); each reference is run in the sandbox before "
                          "round 0 and a goal whose reference fails, or whose answer hardly changes with its "
                          "parameters, is refused. None uses the bundled goals.")

    @model_validator(mode="after")
    def _files_match_the_environment(self):
        if self.tasks_file and self.name != "tasks":
            raise ValueError(f"tasks_file applies to env.name 'tasks', not {self.name!r}")
        if self.goals_file and self.name != "experiment":
            raise ValueError(f"goals_file applies to env.name 'experiment', not {self.name!r}")
        return self


class WandbConfig(Section):
    enabled: bool = Field(False, description="Log each round's metrics to Weights & Biases.")
    project: str = Field("ouroboros", description="W&B project.")
    entity: str | None = Field(None, description="W&B entity (team or user); None: the key's default.")
    mode: Literal["offline", "online"] = Field(
        "offline", description="offline: files under runs/<run id>/wandb, sent later with `wandb sync`; online: "
                               "sent as the run goes (needs the API key).")
    api_key_env: str = Field("WANDB_API_KEY", description="Environment variable holding the W&B API key (online "
                                                          "mode); the key itself is never stored.")


class TrackingConfig(Section):
    tensorboard: bool = Field(False, description="Write each round's metrics as TensorBoard event files under "
                                                 "runs/<run id>/tensorboard (tensorboard --logdir RUN_DIR/runs).")
    wandb: WandbConfig = Field(default_factory=WandbConfig)


class RayConfig(Section):
    address: str | None = Field(None, description="Cluster address (host:port, or auto); None joins the cluster in "
                                                  "RAY_ADDRESS (as `ray job submit` sets it), else starts a Ray of "
                                                  "this run's own.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs a local Ray advertises; None lets Ray count.")
    max_restarts: int = Field(5, ge=0, description="Times Ray restarts a dead generator, sandbox runner, judge or "
                                                   "agent (its calls are retried on the new one); 0: an actor's death "
                                                   "ends the run. The learner and the recorder are not restarted: a "
                                                   "run they fail resumes with `ouroboros run --resume`.")
    task_events_kept: int = Field(
        0, ge=0, description="Task records the GCS of a Ray this run starts keeps for `ray list tasks` and the "
                             "dashboard; 0 records none, since a Ray this run starts has no dashboard. Each record "
                             "costs the GCS about 3.6 KiB, and reporting them costs every call CPU: Ray's default "
                             "keeps 100,000, and grew a 30-minute run of 32 experiment cycles by 50 MiB. A "
                             "cluster's head sets its own (ray_cluster.yaml keeps 10,000).")


class ResearchConfig(Section):
    web_search: bool = Field(False, description="Allow the web_search action (off by default).")
    search_provider: Literal["google"] = Field("google", description="web_search provider.")
    google_api_key_env: str = Field("GOOGLE_API_KEY", description="Environment variable with the Custom Search API key.")
    google_engine_id_env: str = Field("GOOGLE_CSE_ID", description="Environment variable with the search engine id.")
    search_endpoint: str | None = Field(None, description="Override the search endpoint (a test server).")
    max_results: int = Field(5, ge=1, le=10, description="Hits per web_search.")
    load_url: bool = Field(False, description="Allow the load_url action (off by default).")
    allow_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts load_url may reach even on loopback/private addresses (tests). Public hosts need no entry.",
    )
    timeout_s: float = Field(10.0, gt=0, description="Time limit per web request.")
    max_bytes: int = Field(2_000_000, ge=1024, description="Bytes read per page at most.")
    max_chars: int = Field(20_000, ge=100, description="Characters of page text returned to the model.")


class ExperimentConfig(Section):
    template: str | None = Field(None, description="Prompt template ({goal}, {action_history}, ... as in the README); None uses the built-in one.")
    goal: str = Field(
        "Choose a small, useful experiment that builds on what earlier experiments found.",
        description="The research goal ({goal}) of `ouroboros experiment` cycles; a learning run uses its own goals.")
    demonstrate: bool = Field(
        False, description="Show a finished two-action experiment before each prompt (helps small local models; "
                           "the conversation grows by two renders of the template).")
    cycles_per_agent: int = Field(
        8, ge=1, description="Cycles one ExperimentAgent actor runs at once; --parallel K starts ceil(K / this) agents.")
    max_actions: int = Field(10, ge=1, description="Actions per experiment.")
    max_errors: int = Field(3, ge=1, description="Consecutive failed actions that end an experiment.")
    time_limit_s: float = Field(3600.0, gt=0, description="Wall time per experiment, a running action included.")
    max_tokens: int = Field(200_000, ge=1, description="Prompt plus completion tokens per experiment.")
    max_cost_usd: float | None = Field(None, gt=0, description="Cost budget per experiment for API providers.")
    price_input_per_mtok: float = Field(0.0, ge=0, description="USD per million prompt tokens.")
    price_output_per_mtok: float = Field(0.0, ge=0, description="USD per million completion tokens.")
    query_retries: int = Field(2, ge=0, description="Re-asks after a reply that is not a valid action.")
    max_new_tokens: int = Field(2048, ge=16, description="Tokens per model reply.")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature of the model's replies.")
    context_chars: int = Field(24_000, ge=2000, description="Prompt size the history is trimmed to fit.")
    result_chars: int = Field(4000, ge=200, description="Characters of each action's result kept in the history.")
    prev_experiments: int = Field(3, ge=0, description="Earlier experiments summarized in {prev_data}.")
    learn_from_runs: list[str] = Field(
        default_factory=list,
        description="Earlier runs in the same run directory whose experiments `search` and {prev_data} may show, "
                    "by run id ('*': all of them); a run always sees its own.")
    search_results: int = Field(5, ge=1, description="Ranked snippets per search action.")
    dockerfile: str = Field(
        "FROM ouroboros-sandbox:base\nWORKDIR /work\n",
        description="The environment every experiment starts from (shown as {current_dockerfile}).",
    )
    research: ResearchConfig = Field(default_factory=ResearchConfig)


class Config(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    align: AlignConfig = Field(default_factory=AlignConfig)
    rlaif: RlaifConfig = Field(default_factory=RlaifConfig)

    @model_validator(mode="after")
    def _rlaif_judge_exists(self):
        models = [j.name for j in self.align.judges if j.kind == "model"]
        if self.rlaif.judge_model and self.rlaif.judge_model not in models:
            raise ValueError(f"rlaif.judge_model {self.rlaif.judge_model!r} is not a model judge in align.judges "
                             f"({', '.join(models) or 'none'}): name one, or leave it empty")
        return self

    @model_validator(mode="after")
    def _nccl_learner_has_a_gpu(self):
        if self.generator.weights_transport == "nccl" and not self.learner.num_gpus:
            raise ValueError("generator.weights_transport 'nccl' sends from the learner's GPU and learner.num_gpus "
                             "is 0: give the learner a GPU, or use gloo or store")
        return self

    @model_validator(mode="after")
    def _survival_runs_in_bwrap(self):
        # The survival monitor traces the episode's process from outside its bwrap sandbox.
        if self.env.name == "survival" and self.sandbox.backend != "bwrap":
            raise ValueError(f"env.name 'survival' needs sandbox.backend 'bwrap' (its harm monitor traces the "
                             f"episode's process from outside bwrap), not {self.sandbox.backend!r}")
        return self


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    key = ".".join(str(p) for p in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _fields_at(model, error["loc"][:-1])
        hint = f"; expected one of: {', '.join(allowed)}" if allowed else ""
        return f"unknown config key '{key}'{hint}"
    if kind == "value_error":  # our own validators: their message says it all, and the value may be a secret
        return f"bad value for '{key}': {error['ctx']['error']}" if key else f"bad config: {error['ctx']['error']}"
    value = error.get("input")
    return f"bad value for '{key}': {value!r}: {error['msg'].lower()}"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    # The YAML key: a field's alias where it has one (`async`, a Python keyword, is `async_` here).
    return [f.alias or name for name, f in model.model_fields.items()]


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value), the value read as YAML so numbers and lists work."""
    if "=" not in text:
        raise ConfigError(f"bad --set {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"bad --set {text!r}: the key is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_override(data: dict, path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"bad --set: '{'.'.join(path)}' goes through '{part}', which is not a section")
        node = child
    node[path[-1]] = value


def validate(data: dict) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], Config)) from None


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found: pass a YAML file such as configs/default.yaml")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections, got {type(loaded).__name__}")
        data = loaded or {}
    for item in overrides:
        apply_override(data, *parse_override(item))
    return validate(data)
