"""Learner throughput: tokens/s of our GRPO step against TRL's GRPOTrainer loss step on the same
batch, model and LoRA adapter, generation excluded (both are fed the same completions).

    .venv/bin/python benchmarks/learner_throughput.py [--model smollm2-135m-instruct] [--prompts 8]
        [--samples 4] [--completion 96] [--batch 8] [--repeats 3] [--algorithms grpo,ppo,reinforce]
        [--random-init-from CONFIG_DIR]   # a model folder without weights: random weights of its shape

One step is a full pass over the batch: prompts x samples turns, `--batch` turns per optimizer
step. Ours is `Learner.update` (learn/policy_gradient.py). TRL's is the loss its GRPOTrainer
computes (`compute_loss`: per-token log-probs of the completion positions, clipped surrogate,
grpo token averaging) with backward and an AdamW step on the same LoRA parameters, fed the same
prompt and completion token ids and the same group-normalized advantages. The first pass of
each is a warm-up. On a GPU both run in bfloat16 autocast with gradient checkpointing, as the
learner does there. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time


def build_random_model(config_dir: str) -> str:
    """A model of `config_dir`'s shape with random weights (for a machine without the weights)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = tempfile.mkdtemp(prefix="ouroboros-random-")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir))
    model.save_pretrained(out)
    for name in os.listdir(config_dir):
        if name.startswith("tokenizer") or name.endswith(".jinja") or name == "generation_config.json":
            shutil.copy(os.path.join(config_dir, name), out)
    return out


def make_turns(tokenizer, prompts: int, samples: int, completion: int, seed: int = 0):
    from ouroboros.envs.tasks import build_messages, load_tasks
    from ouroboros.types import Turn

    rng = random.Random(seed)
    tasks = load_tasks("train")[:prompts]
    turns = []
    for t in tasks:
        for k in range(samples):
            ids = [rng.randrange(100, tokenizer.vocab_size - 100) for _ in range(completion)]
            reward = rng.random()
            turns.append(Turn(id=f"{t.id}-{k}#0", trajectory_id=f"{t.id}-{k}", step=0, round=1, task_id=t.id,
                              prompt=build_messages(t), token_ids=ids, logprobs=[], weights_version=0,
                              reward=reward, episode_reward=reward))
    return turns


def ours(cfg, turns, repeats: int) -> dict:
    from ouroboros.actors.learner import Learner

    learner = Learner(cfg)
    times, tokens = [], 0
    for r in range(repeats + 1):
        t = time.perf_counter()
        metrics, _ = learner.update.update(turns, learner.version, learner.optimizer, learner.steps, r)
        _sync(learner.device)
        if r:
            times.append(time.perf_counter() - t)
        tokens = metrics["tokens"]
    s = statistics.median(times)
    return {"seconds_per_pass": s, "tokens_per_s": tokens / s, "steps_per_pass": metrics["steps"],
            "device": learner.device, "bf16": learner.bf16}


def trl(cfg, path, turns, repeats: int, checkpointing: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from ouroboros.actors.generator import lora_settings
    from ouroboros.backends.local_model import chat_prompt_ids
    from ouroboros.learn.losses import group_advantages

    cuda = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, cfg.policy.dtype))
    l = cfg.learner
    if checkpointing:  # Trainer enables it when train() starts; the step here is called directly
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    args = GRPOConfig(output_dir=tempfile.mkdtemp(), use_cpu=not cuda, bf16=cuda, gradient_checkpointing=checkpointing,
                      per_device_train_batch_size=l.batch_size, num_generations=2,
                      max_completion_length=cfg.generator.max_new_tokens, loss_type="grpo", beta=0.0,
                      learning_rate=l.learning_rate, report_to=[], disable_tqdm=True, save_strategy="no")
    data = Dataset.from_list([{"prompt": "x"}] * l.batch_size)
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
                          train_dataset=data, processing_class=tok, peft_config=LoraConfig(**lora_settings(cfg)))
    trainer.current_gradient_accumulation_steps = 1
    net = trainer.model
    net.train()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=l.learning_rate)
    device = next(net.parameters()).device
    groups = {}
    adv = group_advantages(torch.tensor([t.reward for t in turns]),
                           torch.tensor([groups.setdefault(t.task_id, len(groups)) for t in turns]))
    batches = []
    for s in range(0, len(turns), l.batch_size):
        chunk = turns[s:s + l.batch_size]
        prompts = [chat_prompt_ids(tok, t.prompt) for t in chunk]
        P, T = max(map(len, prompts)), max(len(t.token_ids) for t in chunk)
        pid = torch.full((len(chunk), P), tok.pad_token_id)
        pm = torch.zeros((len(chunk), P), dtype=torch.long)
        cid = torch.full((len(chunk), T), tok.pad_token_id)
        cm = torch.zeros((len(chunk), T), dtype=torch.long)
        for i, (p, t) in enumerate(zip(prompts, chunk)):
            pid[i, P - len(p):] = torch.tensor(p)
            pm[i, P - len(p):] = 1
            cid[i, :len(t.token_ids)] = torch.tensor(t.token_ids)
            cm[i, :len(t.token_ids)] = 1
        batches.append({"prompt_ids": pid.to(device), "prompt_mask": pm.to(device), "completion_ids": cid.to(device),
                        "completion_mask": cm.to(device), "advantages": adv[s:s + l.batch_size].to(device),
                        "num_items_in_batch": cm.sum().to(device)})
    tokens = sum(len(t.token_ids) for t in turns)
    times = []
    for r in range(repeats + 1):
        t = time.perf_counter()
        if len(batches) > 1:
            # Several optimizer steps per generation batch: GRPOTrainer then computes the old
            # policy's log-probs in a no-grad pass first (steps_per_generation > accumulation),
            # as our learner does.
            with torch.no_grad():
                for inputs in batches:
                    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
                    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
                    with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else _null():
                        inputs["old_per_token_logps"] = trainer._get_per_token_logps_and_entropies(
                            net, ids, mask, inputs["completion_ids"].size(1))[0]
        for inputs in batches:
            with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else _null():
                loss = trainer.compute_loss(net, inputs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], l.max_grad_norm)
            optimizer.step()
        _sync("cuda" if cuda else "cpu")
        if r:
            times.append(time.perf_counter() - t)
    s = statistics.median(times)
    return {"seconds_per_pass": s, "tokens_per_s": tokens / s, "steps_per_pass": len(batches)}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--random-init-from", default=None)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--completion", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--algorithms", default="grpo")
    ap.add_argument("--no-trl", action="store_true")
    ap.add_argument("--checkpointing", choices=("auto", "on", "off"), default="auto",
                    help="gradient checkpointing for both learners (auto: on a GPU only, as the learner does)")
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    from ouroboros import models
    from ouroboros.config import load_config

    torch.set_num_threads(args.threads)
    path = build_random_model(args.random_init_from) if args.random_init_from else models.resolve(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    turns = make_turns(tok, args.prompts, args.samples, args.completion)
    result = {"model": args.model if not args.random_init_from else f"random weights, shape of {args.random_init_from}",
              "turns": len(turns), "completion_tokens": args.completion, "batch": args.batch,
              "device": "cuda" if torch.cuda.is_available() else "cpu", "torch": torch.__version__}
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name(0)
    checkpointing = {"auto": torch.cuda.is_available(), "on": True, "off": False}[args.checkpointing]
    result["gradient_checkpointing"] = checkpointing
    for algorithm in args.algorithms.split(","):
        cfg = load_config(None, [f"learner.gradient_checkpointing={str(checkpointing).lower()}", f"policy.model={path}", f"learner.algorithm={algorithm}", "learner.epochs=1",
                                 f"learner.batch_size={args.batch}", f"learner.threads={args.threads}",
                                 f"generator.max_new_tokens={args.completion}", "learner.max_length=2048"])
        result[algorithm] = ours(cfg, turns, args.repeats)
    if not args.no_trl and "grpo" in result:
        cfg = load_config(None, [f"policy.model={path}", f"learner.batch_size={args.batch}",
                                 f"generator.max_new_tokens={args.completion}"])
        result["trl_grpo"] = trl(cfg, path, turns, args.repeats, checkpointing)
        result["grpo_vs_trl"] = result["grpo"]["tokens_per_s"] / result["trl_grpo"]["tokens_per_s"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
