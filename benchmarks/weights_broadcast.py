"""Weight broadcast: the time to make a new version live on every generator, against one
in-memory copy of the published tensors, measured in the same run.

    .venv/bin/python benchmarks/weights_broadcast.py [--generators 2] [--repeats 5] [--model smollm2-135m-instruct]
                                                     [--backend hf|vllm] [--lora-sync merge|adapter] [--multiprocess]
                                                     [--transport store|gloo]

For each kind (lora: the adapter; full: base with adapter merged), the learner publishes a
version (tensors copied once, put into the Ray object store), and every generator actor
fetches it zero-copy and copies it into its live model. "broadcast" is the driver's wall time
from issuing the loads to all generators reporting the version live; "one copy" is the
learner copying the same tensors once in memory. "in_generator" splits a load, on the slowest
generator, into the fetch, the checksum check (every load verifies what the learner published)
and the copy. The first load of each kind is a warm-up and is not timed. Prints one JSON object.

With --backend vllm each generator is a running vLLM engine. A LoRA version is merged into the
generator's base weights and reloaded (--lora-sync merge, the default), or written as a
per-version adapter folder and added to the engine (adapter). A full version goes through
`collective_rpc` into the engine's in-place weight reload.

With --transport gloo the bytes do not come from the object store: the learner broadcasts the
published buffer over a gloo process group (generator.weights_transport; ouroboros/weights_group.py)
and "fetch" is each generator's receive. "send" is the learner's side of that broadcast.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--generators", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    ap.add_argument("--multiprocess", action="store_true", help="vllm: the engine core in a child process")
    ap.add_argument("--lora-sync", choices=("merge", "adapter"), default="merge", help="vllm: how LoRA versions go live")
    ap.add_argument("--transport", choices=("store", "gloo"), default="store",
                    help="how the bytes reach the generators (generator.weights_transport)")
    args = ap.parse_args()

    import ray

    from ouroboros.actors.generator import Generator
    from ouroboros.actors.learner import Learner
    from ouroboros.config import load_config
    from ouroboros.weights_group import Broadcaster

    cfg = load_config("configs/default.yaml", [f"policy.model={args.model}", "generator.threads=1",
                                               "learner.threads=1", f"generator.backend={args.backend}",
                                               "generator.vllm.kv_cache_gb=1",
                                               f"generator.vllm.multiprocess={str(args.multiprocess).lower()}",
                                               f"generator.vllm.lora_sync={args.lora_sync}",
                                               f"generator.weights_transport={args.transport}"])
    ray.init(address="local", num_cpus=args.generators + 1, include_dashboard=False, log_to_driver=False)
    learner = ray.remote(num_cpus=1)(Learner).remote(cfg)
    gens = [ray.remote(num_cpus=1)(Generator).remote(cfg) for _ in range(args.generators)]
    ray.get([g.weights_version.remote() for g in gens] + [learner.weights_version.remote()])
    broadcaster = Broadcaster(args.transport, cfg.generator.sync_timeout_s)

    def load(weights):
        return broadcaster.collect(broadcaster.launch(learner, gens, weights), len(gens), 600)
    results = {"model": args.model, "backend": args.backend, "multiprocess": args.multiprocess,
               "lora_sync": args.lora_sync if args.backend == "vllm" else None,
               "generators": args.generators, "transport": args.transport,
               "repeats": args.repeats}
    for kind in ("lora", "full"):
        # One untimed load first: the first version of a kind re-shapes each generator (attaching
        # the adapter, or dropping it and re-homing the base weights into one flat tensor). That
        # happens once per run, not per version, so it is not what a broadcast costs.
        w = ray.get(learner.publish.remote(kind))
        load(w)
        broadcast, copy, publish, nbytes, sends = [], [], [], 0, []
        parts: dict[str, list[float]] = {"fetch_s": [], "checksum_s": [], "copy_s": []}
        for _ in range(args.repeats):
            t = time.perf_counter()
            weights = ray.get(learner.publish.remote(kind))
            publish.append(time.perf_counter() - t)
            nbytes = weights.num_bytes
            t = time.perf_counter()
            loads, send_s = load(weights)
            broadcast.append(time.perf_counter() - t)
            assert all(x["version"] == weights.version and not x["fallback"] for x in loads)
            if send_s is not None:
                sends.append(send_s)
            for part in parts:  # the slowest generator's, as the broadcast waits for it
                parts[part].append(max(x[part] for x in loads))
            copy.append(ray.get(learner.copy_benchmark.remote()))  # the buffer just published
        b, c = statistics.median(broadcast), statistics.median(copy)
        results[kind] = {"bytes": nbytes, "publish_s": statistics.median(publish), "broadcast_s": b,
                         "one_copy_s": c, "ratio": b / c, "send_s": statistics.median(sends) if sends else None,
                         "in_generator": {part: statistics.median(xs) for part, xs in parts.items()}}
    ray.shutdown()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
