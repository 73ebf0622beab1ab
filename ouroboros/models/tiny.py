"""A tiny Llama with SmolLM2's tokenizer, for tests and the smoke config.

A randomly initialised model would never emit a valid action, so every reward
would tie and no DPO pair would ever form. The tiny model is therefore
warm-started with a few supervised steps on protocol replies to the *train*
tasks: it learns the shape of the reply only partly, which leaves the spread of
rewards that preference learning needs. Held-out tasks are never shown to it.
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
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "sft_steps": 150,
    "sft_batch": 8,
    "sft_lr": 3e-3,
    "seed": 0,
}


def _recipe_key() -> str:
    from ouroboros.envs.tasks import prompt
    from ouroboros.envs.tasks.dataset import DATA

    # The model is trained on prompts and replies, so a change to either makes a new model.
    blob = (json.dumps(RECIPE, sort_keys=True) + prompt.SYSTEM + prompt.EXAMPLE_TASK + prompt.EXAMPLE_REPLY).encode()
    blob += DATA.read_bytes()
    return hashlib.sha256(blob).hexdigest()[:12]


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
    from ouroboros.models import smollm2

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(smollm2.prepare(log=log))
    torch.manual_seed(RECIPE["seed"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=RECIPE["hidden_size"],
        intermediate_size=RECIPE["intermediate_size"],
        num_hidden_layers=RECIPE["num_hidden_layers"],
        num_attention_heads=RECIPE["num_attention_heads"],
        num_key_value_heads=RECIPE["num_key_value_heads"],
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)

    # Supervised warm start on (prompt, reference reply) for train tasks; loss on the reply only.
    examples = []
    for task in load_tasks("train"):
        prompt = tokenizer.apply_chat_template(build_messages(task), add_generation_prompt=True, tokenize=False)
        reply = reference_reply(task) + tokenizer.eos_token
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
        examples.append((p_ids + r_ids, [-100] * len(p_ids) + r_ids))
    optimizer = torch.optim.AdamW(model.parameters(), lr=RECIPE["sft_lr"])
    generator = torch.Generator().manual_seed(RECIPE["seed"])
    model.train()
    for step in range(RECIPE["sft_steps"]):
        idx = torch.randint(len(examples), (RECIPE["sft_batch"],), generator=generator).tolist()
        batch = [examples[i] for i in idx]
        width = max(len(ids) for ids, _ in batch)
        pad = config.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        # The LM head runs only where there is a label: a 49k-vocab head over the whole
        # prompt would cost several times the rest of the step.
        hidden = model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
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
