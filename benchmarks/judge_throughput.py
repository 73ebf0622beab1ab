"""Judging throughput of the alignment judge pool with 1, 2 and 4 judge actors, and the cache's hit
rate on a repeated round.

Two kinds of judge, each on one fixed batch of candidates (the bundled evaluation prompts with
answers of several qualities):
- a local model judge (SmolLM2-135M, logprob mode, one torch thread per actor): compute-bound, so
  it scales with the cores a machine has;
- an API judge (the OpenAI SDK against a loopback server that answers after a fixed latency,
  as a provider would): latency-bound, so it scales with the actors.
The same batch judged again is all cache hits. With `--per-prompt 4` the batch is a training
round's shape, four answers to each prompt, whose shared context a local judge runs once.

    .venv/bin/python benchmarks/judge_throughput.py [--candidates 48] [--latency 0.25] [--out FILE]
    .venv/bin/python benchmarks/judge_throughput.py --kinds local --per-prompt 4
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def batch(n: int, per_prompt: int = 1):
    """n candidates: `per_prompt` answers (of several qualities) to each of n / per_prompt prompts."""
    from ouroboros.config import Config
    from ouroboros.envs.alignment.tasks import load_tasks
    from ouroboros.types import Action, Completion, Request, Step, Trajectory

    tasks = [t for t in load_tasks(Config()) if t.split == "heldout" and t.facts][:-(-n // per_prompt)]
    out = []
    for i in range(n):
        t = tasks[i // per_prompt]
        text = [" ".join(t.facts), "I am not sure, maybe ask someone else.", t.facts[0] + " Anything else?",
                t.facts[-1] + " That is all I know."][i % (4 if per_prompt > 1 else 3)]
        c = Completion(f"b{i}", text, [], [], 0, "bench")
        out.append(Trajectory(f"b{i}", t.id, "heldout", 0, 0, [Step(0, Request(f"b{i}", []), c,
                                                                     Action("answer", text, "", True), None)]))
    return tasks, out


def measure(cfg, tasks, trajs, spec, actors: int, cache_dir: str) -> dict:
    import ray

    from ouroboros.actors.alignment_judge import AlignmentJudge, JudgeWorker

    cls = ray.remote(num_cpus=0, max_concurrency=2)(JudgeWorker)
    workers = [cls.remote(spec, cfg.align.rubric, cfg) for _ in range(actors)]
    ray.get([w.identity.remote() for w in workers])  # loaded before the clock starts
    pool = AlignmentJudge(cfg, tasks, f"bench-{actors}", {spec.name: workers}, os.path.join(cache_dir, f"c{actors}.db"))
    started = time.perf_counter()
    scores = pool.score(trajs)
    first = time.perf_counter() - started
    started = time.perf_counter()
    pool.score(trajs)
    again = time.perf_counter() - started
    stats = pool.cache_stats()
    for w in workers:
        ray.kill(w)
    return {"actors": actors, "candidates": len(trajs), "seconds": round(first, 3),
            "candidates_per_s": round(len(trajs) / first, 2),
            "failures": sum(1 for s in scores if s.components.get("judge_failed")),
            "repeat_seconds": round(again, 4), "repeat_hit_rate": round(stats["hits"] / len(trajs), 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=48)
    ap.add_argument("--latency", type=float, default=0.25, help="seconds the loopback API takes per request")
    ap.add_argument("--actors", default="1,2,4")
    ap.add_argument("--kinds", default="local,api", help="which judges to measure (the file keeps the others')")
    ap.add_argument("--per-prompt", type=int, default=1,
                    help="answers per prompt: 4 is a training round's shape (a local judge shares each prompt's "
                         "context); the result goes under local_per_prompt_N")
    ap.add_argument("--out", default="benchmarks/results/judge_throughput.json")
    args = ap.parse_args()

    import ray

    from api_servers import FakeOpenAIServer
    from ouroboros import models
    from ouroboros.config import ApiConfig, Config, JudgeSpec

    cfg = Config()
    tasks, trajs = batch(args.candidates, args.per_prompt)
    counts = [int(x) for x in args.actors.split(",")]
    kinds = args.kinds.split(",")
    os.environ["BENCH_KEY"] = "sk-bench"  # before Ray starts, so the judge actors inherit it
    ray.init(address="local", num_cpus=max(counts) + 2, include_dashboard=False, log_to_driver=False)
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    result.update({"cpus": os.cpu_count(), "candidates": len(trajs)})
    with tempfile.TemporaryDirectory() as tmp:
        local = JudgeSpec(name="smollm2", backend="hf", mode="logprob", model=models.resolve("smollm2-135m-instruct"))
        if "local" in kinds:
            name = "local" if args.per_prompt == 1 else f"local_per_prompt_{args.per_prompt}"
            result[name] = []
            for n in counts:
                result[name].append(measure(cfg, tasks, trajs, local, n, tmp + "/l"))
                print(name, result[name][-1], flush=True)
        with FakeOpenAIServer() as server:
            server.delay_s = args.latency

            def respond(prompt: str) -> str:
                import re

                nonce = re.search(r'"id": "([0-9a-f]{16})"', prompt).group(1)
                return json.dumps({"id": nonce, "helpful": 4, "honest": 4, "persona": 3, "notes": "ok"})

            server.respond = respond
            api = JudgeSpec(name="api", backend="openai", mode="json",
                            api=ApiConfig(model="gpt-test", base_url=server.base_url, api_key_env="BENCH_KEY"))
            if "api" in kinds:
                result["api"] = []
                result["latency_s"] = args.latency
                for n in counts:
                    result["api"].append(measure(cfg, tasks, trajs, api, n, tmp + "/a"))
                    print("api", result["api"][-1], flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main()
