"""A tiny Llama with SmolLM2's tokenizer, for tests and the smoke config.

A randomly initialised model would never emit a valid action, so every reward
would tie and no DPO pair would ever form. The tiny model is therefore
warm-started with a few supervised steps on protocol replies to the *train*
tasks, and on the two turns of an experiment (run the reference program on one
drawn instance, then finalize with the one number it printed) for the *train*
research goals: it learns the shape of the replies only partly, which leaves the
spread of rewards that preference learning needs. Held-out tasks and goals are
never shown to it.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ouroboros.models.cache import model_cache_dir, prepare_once

NAME = "tiny-smollm2"
RECIPE = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    # Head size 32 (2 heads of 32): the smallest vLLM's CPU attention runs.
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_positions": 4096,  # experiment prompts with their demonstration run to ~2k tokens
    "sft_steps": 200,
    "sft_batch": 8,
    "sft_lr": 3e-3,
    # Each batch is drawn from examples of about the same length: an experiment turn (~1.5k
    # tokens) no longer pads a batch of ~250-token task replies to its length.
    "sft_length_buckets": 5,
    # Batches are padded on the right and attend with the causal mask alone (below): part of
    # the recipe, since it changes the trained weights in their last bits.
    "sft_attention": "causal",
    "seed": 0,
}


def _recipe_key() -> str:
    from ouroboros.envs.experiment import goals
    from ouroboros.envs.experiment import prompt as xprompt
    from ouroboros.envs.tasks import prompt
    from ouroboros.envs.tasks.dataset import DATA

    # The model is trained on prompts and replies, so a change to either makes a new model.
    blob = (json.dumps(RECIPE, sort_keys=True) + prompt.SYSTEM + prompt.EXAMPLE_TASK + prompt.EXAMPLE_REPLY).encode()
    blob += DATA.read_bytes() + goals.DATA.read_bytes()
    blob += (xprompt.DEFAULT_TEMPLATE + json.dumps(xprompt.DEMO_REPLIES) + xprompt.DEMO_RESULT).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def experiment_examples() -> list[tuple[list[dict], str]]:
    """(messages, reply) for the two turns of an experiment on each train goal, as the
    experiment environment renders them with its demonstration (configs/smoke-run-experiment.yaml):
    run the reference program on one instance of the goal, then finalize with the one number it
    printed. The answers are computed by running the references in a bwrap sandbox, as the judge
    does, never on the host: a goals file is code."""
    from ouroboros.config import ExperimentConfig, SandboxConfig
    from ouroboros.envs.experiment import prompt
    from ouroboros.envs.experiment.goals import load_goals

    x = ExperimentConfig(max_actions=3)
    result_chars, context_chars = 500, 6000
    instances = [goal.draw("tiny-warm-start") for goal in load_goals("train")]
    answers = _answers_in_a_sandbox(instances)
    examples = []
    for n, (instance, answer) in enumerate(zip(instances, answers)):
        values = prompt.values(x, SandboxConfig(), experiment_id=n + 1, current_action=1, time_remaining=120.0,
                               prev_data="(no earlier experiments)", dockerfile=x.dockerfile, goal=instance.text)
        demo = prompt.demonstration(prompt.DEFAULT_TEMPLATE, values, result_chars, context_chars)
        run = {"action": "run", "data": instance.program, "notes": "Compute it directly."}
        final = {"action": "finalize", "data": f"The answer is {answer}.", "notes": "Computed by the program."}
        first, _ = prompt.render(prompt.DEFAULT_TEMPLATE, values, [], result_chars, context_chars)
        second, _ = prompt.render(prompt.DEFAULT_TEMPLATE, {**values, "current_action": 2},
                                  [prompt.demo_step(run, f"exit code 0\nstdout:\n{answer}\n")], result_chars,
                                  context_chars)
        examples.append((prompt.build_messages(first, demo), json.dumps(run)))
        examples.append((prompt.build_messages(second, demo), json.dumps(final)))
    return examples


def _answers_in_a_sandbox(instances: list) -> list[str]:
    from ouroboros.actors.sandbox_runner import SandboxRunner
    from ouroboros.config import SandboxConfig
    from ouroboros.envs.experiment.references import References
    from ouroboros.sandbox import SandboxUnavailable

    try:
        runner = SandboxRunner(SandboxConfig(backend="bwrap", timeout_s=60, concurrency=2))
    except SandboxUnavailable as exc:
        raise SandboxUnavailable(f"the tiny model's warm start runs the train goals' reference programs in a bwrap "
                                 f"sandbox, which is not available here: {exc}") from None
    try:
        return [str(References([runner], parallel=2).answer(i)) for i in instances]
    finally:
        runner.cleanup()


def _length_buckets(lengths: list[int], n: int) -> list[tuple[int, ...]]:
    """The example indices sorted by length, cut into `n` groups of about equal count."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    size = -(-len(order) // n)
    return [tuple(order[i:i + size]) for i in range(0, len(order), size)]


def prepared_dir() -> Path:
    return model_cache_dir() / f"{NAME}-{_recipe_key()}"


def is_prepared() -> bool:
    return (prepared_dir() / "config.json").is_file()


def prepare(force: bool = False, log=print) -> Path:
    return prepare_once(NAME, prepared_dir(), is_prepared, lambda tmp: _build(tmp, log), force)


def _build(tmp: Path, log) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ouroboros.envs.tasks import build_messages, load_tasks, reference_reply
    from ouroboros.learn.cpu_memory import reuse_freed_memory
    from ouroboros.models import smollm2

    started = time.monotonic()
    reuse_freed_memory()
    tokenizer = AutoTokenizer.from_pretrained(smollm2.prepare(log=log))
    torch.manual_seed(RECIPE["seed"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=RECIPE["hidden_size"],
        intermediate_size=RECIPE["intermediate_size"],
        num_hidden_layers=RECIPE["num_hidden_layers"],
        num_attention_heads=RECIPE["num_attention_heads"],
        num_key_value_heads=RECIPE["num_key_value_heads"],
        max_position_embeddings=RECIPE["max_positions"],
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)

    # Supervised warm start on (prompt, reference reply) for train tasks and the turns of train
    # experiments; loss on the reply only.
    examples = []
    pairs = [(build_messages(task), reference_reply(task)) for task in load_tasks("train")] + experiment_examples()
    for messages, reply in pairs:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        reply = reply + tokenizer.eos_token
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
        examples.append((p_ids + r_ids, [-100] * len(p_ids) + r_ids))
    optimizer = torch.optim.AdamW(model.parameters(), lr=RECIPE["sft_lr"])
    generator = torch.Generator().manual_seed(RECIPE["seed"])
    buckets = _length_buckets([len(ids) for ids, _ in examples], RECIPE["sft_length_buckets"])
    bucket_of = {i: b for b in buckets for i in b}
    model.train()
    for step in range(RECIPE["sft_steps"]):
        # An example drawn uniformly picks the bucket, so each example is seen as often as before.
        bucket = bucket_of[int(torch.randint(len(examples), (1,), generator=generator))]
        idx = torch.randint(len(bucket), (RECIPE["sft_batch"],), generator=generator).tolist()
        batch = [examples[bucket[i]] for i in idx]
        width = max(len(ids) for ids, _ in batch)
        pad = config.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        # No padding mask: the padding is on the right, so under the causal mask no real token
        # sees it, and the padded positions have no label. The same loss, and attention takes
        # its causal path (no mask built, the upper triangle skipped): a batch of experiment
        # turns (~1.5k tokens) trains 12-35% faster, and the whole build 141 -> 124 s.
        # The LM head runs only where there is a label: a 49k-vocab head over the whole
        # prompt would cost several times the rest of the step.
        hidden = model.model(input_ids=input_ids).last_hidden_state
        keep = labels[:, 1:] != -100
        logits = model.lm_head(hidden[:, :-1][keep])
        loss = torch.nn.functional.cross_entropy(logits, labels[:, 1:][keep])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "recipe.json").write_text(json.dumps({**RECIPE, "final_sft_loss": float(loss.detach())}, indent=1))
    log(f"built {NAME} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
        f"sft loss {float(loss.detach()):.2f}) in {time.monotonic() - started:.1f} s")
