"""Generation throughput: the vllm generator pool against single-process HF `generate`.

    .venv/bin/python benchmarks/generation_throughput.py                      # SmolLM2, 32 tasks x 4 samples
    .venv/bin/python benchmarks/generation_throughput.py --model tiny-smollm2 --tasks 8 --pool 1

The workload is a round of the tasks environment: the first 32 tasks (train, then held-out),
4 samples each at temperature 1.0, top-p 0.95, up to 112 new tokens (configs/default.yaml),
each sample its own request with its own seed, as the agents send them.

- hf: one HFBackend in this process (2 torch threads), at batch sizes 8, 16 and 32.
- vllm: 1, 2 and 4 Generator actors on Ray (2 CPUs shared between them), each running a vLLM
  engine; each task's 4 samples go to one generator, tasks round-robin, all at once.

Both run in float32 on the same model and prompts. tokens/s counts generated tokens over the
wall time of the whole workload. "first tokens" is the time for the same workload with one new
token per request: prefill and scheduling of every prompt, the wait before any reply can grow.
"adapter" repeats the best setting of each with a LoRA version live (every round after the
first samples through one). One warm-up call precedes each timed one. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace


def workload(tasks: int, samples: int, tokens: int):
    from ouroboros.envs.tasks import build_messages, load_tasks
    from ouroboros.types import Request

    chosen = (load_tasks("train") + load_tasks("heldout"))[:tasks]
    return [[Request(id=f"{t.id}-s{k}", messages=build_messages(t), max_new_tokens=tokens, temperature=1.0,
                     top_p=0.95, seed=1000 * i + k) for k in range(samples)] for i, t in enumerate(chosen)]


def adapter(model_path: str, cfg):
    """A LoRA version as the learner publishes one (small random B: outputs move, lengths stay sane)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ouroboros.actors.generator import lora_settings
    from ouroboros.weights import pack

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path), LoraConfig(**lora_settings(cfg)))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    return pack([(n, p) for n, p in model.named_parameters() if "lora_" in n])


def timed(fn) -> tuple[float, list]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def hf(model_path: str, groups, batches, bucket, lora: dict) -> dict:
    from ouroboros.backends.hf import HFBackend

    flat = [r for g in groups for r in g]
    out = {}
    for batch in batches:
        backend = HFBackend(model_path, threads=2, max_batch=batch)
        backend.generate(flat[:batch])  # warm-up
        secs, done = timed(lambda: backend.generate(flat))
        first, _ = timed(lambda: backend.generate([replace(r, max_new_tokens=1) for r in flat]))
        tokens = sum(len(c.token_ids) for c in done)
        out[f"batch {batch}"] = {"seconds": secs, "tokens": tokens, "tokens_per_s": tokens / secs, "first_tokens_s": first}
    best = max(out, key=lambda k: out[k]["tokens_per_s"])
    backend = HFBackend(model_path, threads=2, max_batch=int(best.split()[1]), lora=lora)
    backend.load_weights(bucket.flat, bucket.index, "lora", 1)
    backend.generate(flat[:8])
    secs, done = timed(lambda: backend.generate(flat))
    tokens = sum(len(c.token_ids) for c in done)
    out["adapter"] = {"setting": best, "seconds": secs, "tokens": tokens, "tokens_per_s": tokens / secs}
    return out


def vllm_pool(cfg, groups, sizes, bucket) -> dict:
    import ray

    from ouroboros.actors.generator import Generator
    from ouroboros.types import WeightsRef
    from ouroboros.weights import checksum

    out = {}
    for size in sizes:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        c = cfg.model_copy(deep=True)
        c.generator.threads = max(1, 2 // size)
        gens = [ray.remote(num_cpus=2 / size, max_concurrency=64)(Generator).remote(c) for _ in range(size)]
        ray.get([g.weights_version.remote() for g in gens])

        def run(groups_):
            refs = [gens[i % size].generate.remote(g) for i, g in enumerate(groups_)]
            return [x for r in ray.get(refs) for x in r]

        run(groups[:size])  # warm-up
        secs, done = timed(lambda: run(groups))
        first, _ = timed(lambda: run([[replace(r, max_new_tokens=1) for r in g] for g in groups]))
        tokens = sum(len(x.token_ids) for x in done)
        row = {"seconds": secs, "tokens": tokens, "tokens_per_s": tokens / secs, "first_tokens_s": first}
        if size == 1:
            ref = WeightsRef(version=1, kind="lora", ref=ray.put(bucket.flat), checksum=checksum(bucket.flat,
                             bucket.index), num_bytes=bucket.flat.nbytes, base_model="", index=bucket.index)
            ray.get([g.load_weights.remote(ref) for g in gens])
            run(groups[:1])
            asecs, adone = timed(lambda: run(groups))
            atokens = sum(len(x.token_ids) for x in adone)
            assert {x.weights_version for x in adone} == {1}
            out["adapter"] = {"setting": "1 generator", "seconds": asecs, "tokens": atokens,
                              "tokens_per_s": atokens / asecs}
        out[f"{size} generator{'s' if size > 1 else ''}"] = row
        for g in gens:
            ray.kill(g)
        ray.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tasks", type=int, default=32)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=112)
    ap.add_argument("--batches", default="8,16,32")
    ap.add_argument("--pool", default="1,2,4")
    ap.add_argument("--multiprocess", action="store_true", help="the engine core in a child process of each actor")
    ap.add_argument("--skip-hf", action="store_true", help="vllm only (the hf side takes most of the time)")
    args = ap.parse_args()

    from ouroboros import models
    from ouroboros.actors.generator import lora_settings
    from ouroboros.config import load_config

    cfg = load_config("configs/default.yaml", [f"policy.model={args.model}", "generator.backend=vllm",
                                               "generator.vllm.kv_cache_gb=2",
                                               f"generator.vllm.multiprocess={str(args.multiprocess).lower()}"])
    path = models.resolve(args.model)
    groups = workload(args.tasks, args.samples, args.tokens)
    bucket = adapter(path, cfg)
    result = {"model": args.model, "requests": sum(len(g) for g in groups), "max_new_tokens": args.tokens,
              "multiprocess": args.multiprocess,
              "vllm": vllm_pool(cfg, groups, [int(x) for x in args.pool.split(",")], bucket)}
    if args.skip_hf:
        print(json.dumps(result, indent=1))
        return
    result["hf"] = hf(path, groups, [int(x) for x in args.batches.split(",")], bucket, lora_settings(cfg))
    best_hf = max(v["tokens_per_s"] for k, v in result["hf"].items() if k != "adapter")
    best_vllm = max(v["tokens_per_s"] for k, v in result["vllm"].items() if k != "adapter")
    result["speedup_best_vllm_over_best_hf"] = best_vllm / best_hf
    result["speedup_with_adapter"] = result["vllm"]["adapter"]["tokens_per_s"] / result["hf"]["adapter"]["tokens_per_s"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
