"""The CUDA paths of the learner and the hf generator, checked and timed on one GPU.

    python benchmarks/gpu_paths.py [--model smollm2-135m-instruct | --random-init-from CONFIG_DIR]

1. The learner on CUDA (bf16 autocast, gradient checkpointing): one pass of GRPO, PPO and
   REINFORCE over 32 turns, with finite losses and moved LoRA weights.
2. Publishing: a LoRA version and a full version, loaded by an hf Generator on CUDA; the
   generator's greedy reply then equals the learner's own greedy reply (same policy).
3. Full-weight sync on CUDA against the bandwidth it needs: the time to make a full version
   live (host buffer -> the GPU's parameters), against one pinned host-to-device copy of the
   same bytes.
4. Generation on CUDA: tokens/s of the hf generator at batch 32.

No Ray: the classes run plainly, as their tests do. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import math
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--random-init-from", default=None)
    args = ap.parse_args()

    import torch

    from benchmarks.learner_throughput import build_random_model, make_turns
    from ouroboros import models
    from ouroboros.actors.generator import Generator
    from ouroboros.actors.learner import Learner
    from ouroboros.config import load_config
    from ouroboros.envs.tasks import build_messages, load_tasks
    from ouroboros.types import Request

    cuda = torch.cuda.is_available()  # the script also runs on CPU, to check it before a GPU is lent
    dev = "cuda" if cuda else "cpu"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    path = build_random_model(args.random_init_from) if args.random_init_from else models.resolve(args.model)
    out = {"gpu": torch.cuda.get_device_name(0) if cuda else None, "torch": torch.__version__, "model": path}

    def settings(algorithm):
        return [f"policy.model={path}", f"learner.algorithm={algorithm}", f"learner.num_gpus={int(cuda)}", "learner.epochs=1",
                "learner.batch_size=16", "learner.max_length=1024", "generator.backend=hf",
                "generator.max_new_tokens=64", "learner.kl_coef=0.04"]

    # 1. learners
    for algorithm in ("grpo", "ppo", "reinforce"):
        cfg = load_config(None, settings(algorithm))
        learner = Learner(cfg)
        turns = make_turns(learner.tokenizer, 8, 4, 96)
        before = {n: p.detach().clone() for n, p in learner.model.named_parameters() if p.requires_grad}
        sync()
        t = time.perf_counter()
        metrics, rows = learner.update.update(turns, 0, learner.optimizer, 0, 0)
        sync()
        moved = sum(not torch.equal(p, before[n]) for n, p in learner.model.named_parameters() if p.requires_grad)
        out[algorithm] = {"device": learner.device, "bf16": learner.bf16,
                          "checkpointing": learner.model.get_base_model().is_gradient_checkpointing,
                          "loss": metrics["loss"], "finite": math.isfinite(metrics["loss"]), "steps": metrics["steps"],
                          "lora_tensors_moved": moved, "seconds": time.perf_counter() - t, "rows": len(rows),
                          "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
        if algorithm == "grpo":
            kept = learner
        else:
            del learner
            if cuda:
                torch.cuda.empty_cache()
    learner = kept
    learner_cfg = load_config(None, settings("grpo"))

    # 2. versions into an hf generator on CUDA; the same policy on both sides
    gen = Generator(learner_cfg)
    task = load_tasks("heldout")[0]
    req = Request(id="g", messages=build_messages(task), max_new_tokens=24, temperature=0.0)
    tok = learner.tokenizer
    prompt = torch.tensor([tok.apply_chat_template(req.messages, add_generation_prompt=True, return_dict=False)],
                          device=dev)

    def learner_greedy():
        with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16, enabled=cuda):
            ids = learner.model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24,
                                         do_sample=False)
        return ids[0, prompt.shape[1]:].tolist()

    for kind in ("lora", "full"):
        weights = learner.publish(kind)
        sync()
        t = time.perf_counter()
        gen.load_weights(weights)
        sync()
        load_s = time.perf_counter() - t
        served = gen.generate([req])[0].token_ids
        mine = learner_greedy()
        n = min(len(served), len(mine))
        out[f"sync_{kind}"] = {"version": weights.version, "bytes": weights.num_bytes, "load_s": load_s,
                               "generator_device": str(next(gen.backend.model.parameters()).device),
                               "greedy_equal_prefix": sum(1 for a, b in zip(served, mine) if a == b) / max(n, 1),
                               "generator_version": gen.weights_version()}

    # 3. full sync against a pinned host-to-device copy of the same bytes
    full = learner.publish("full")
    src = torch.from_numpy(full.ref)
    src = src.pin_memory() if cuda else src
    dst = torch.empty(src.numel(), dtype=src.dtype, device=dev)
    dst.copy_(src, non_blocking=True)
    sync()
    t = time.perf_counter()
    dst.copy_(src, non_blocking=True)
    sync()
    h2d = time.perf_counter() - t
    loads = []
    for _ in range(3):
        sync()
        t = time.perf_counter()
        gen.load_weights(full)
        sync()
        loads.append(time.perf_counter() - t)
    out["full_sync"] = {"bytes": full.num_bytes, "load_s_min": min(loads), "pinned_h2d_copy_s": h2d,
                        "h2d_GBps": full.num_bytes / h2d / 1e9, "ratio_to_one_copy": min(loads) / h2d}

    # 4. generation tokens/s at batch 32
    tasks = load_tasks("train")[:32]
    reqs = [Request(id=f"t{i}", messages=build_messages(t), max_new_tokens=64, temperature=1.0, top_p=0.95, seed=i)
            for i, t in enumerate(tasks)]
    gen.generate(reqs[:4])
    sync()
    t = time.perf_counter()
    comps = gen.generate(reqs)
    sync()
    s = time.perf_counter() - t
    tokens = sum(len(c.token_ids) for c in comps)
    out["hf_generation"] = {"requests": len(reqs), "tokens": tokens, "seconds": s, "tokens_per_s": tokens / s}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
