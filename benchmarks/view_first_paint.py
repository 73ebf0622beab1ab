"""First paint of each viewer page on a large run, in headless Chromium, and the server's memory.

Builds a run directory with the real stores: 50,000 completions with scores (10 rounds, 5
versions) and one experiment with 100,000 spans (a root, 1,000 children, each with 99 of its own),
serves it with `ouroboros view` in its own process, and opens each page `--repeat` times,
reading the browser's first-contentful-paint. Prints one JSON object; `--out FILE` writes it too.

    .venv/bin/python benchmarks/view_first_paint.py [--repeat 7] [--out benchmarks/results/view_first_paint.json]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(root: Path, completions: int = 50_000, spans: int = 100_000) -> dict:
    from ouroboros.store.db import RunDB
    from ouroboros.store.experiments import ExperimentStore

    run_id = "big-1"
    db = RunDB(root / "ouroboros.db")
    db.start_run(run_id, "big", {"run": {"name": "big"}})
    rng = random.Random(0)
    rounds = 10
    per_round = completions // rounds
    for r in range(rounds):
        db.upsert("rounds", [{"run_id": run_id, "round": r, "weights_version": r // 2, "status": "done",
                              "metrics": {"round": r, "heldout_reward_mean": 0.4 + 0.02 * r,
                                          "heldout_reward_ci95": [0.35 + 0.02 * r, 0.45 + 0.02 * r],
                                          "heldout_samples": 40, "loss": 0.7 - 0.03 * r},
                              "started_at": time.time(), "finished_at": time.time()}])
        rows, scores = [], []
        for i in range(per_round):
            tid = f"r{r}-t{i // 4}-s{i % 4}"
            text = " ".join(rng.choice(["the", "bridge", "is", "412", "metres", "long", "and", "<b>x</b>"])
                            for _ in range(rng.randint(20, 120)))
            rows.append({"trajectory_id": tid, "run_id": run_id, "round": r, "phase": "train", "task_id": f"t{i // 4}",
                         "split": "train", "sample": i % 4, "request_id": tid, "prompt": json.dumps(
                             [{"role": "user", "content": f"prompt {i // 4}"}]), "text": text,
                         "weights_version": r // 2, "backend": "vllm", "prompt_tokens": 40, "completion_tokens": 80,
                         "finish_reason": "stop", "action": {}, "action_valid": 1, "action_error": "",
                         "exec_result": None, "outcome": {}})
            scores.append({"trajectory_id": tid, "run_id": run_id, "round": r, "judge": "pool",
                           "components": {"aggregate": rng.random()}, "total": rng.random()})
        db.upsert("completions", rows)
        db.upsert("scores", scores)
    db.close()
    store = ExperimentStore(root / "ouroboros.db")
    eid = store.start(run_id, 0, "agent-0", "FROM python", goal="a long experiment")
    children = 1_000
    grandchildren = spans // children - 1
    root = {"id": "root", "experiment_id": eid, "parent_id": None, "kind": "cycle", "name": "cycle",
            "started_at": 0.0, "duration_s": 1.0, "prompt_tokens": 0, "completion_tokens": 0, "attrs": "{}"}
    batch = [root]
    for c in range(children):
        batch.append({**root, "id": f"c{c}", "parent_id": "root", "kind": "action", "name": f"action {c}",
                      "started_at": 1.0 + c})
        for g in range(grandchildren):
            batch.append({**root, "id": f"c{c}-g{g}", "parent_id": f"c{c}", "kind": "query",
                          "name": f"query {g}", "started_at": 1.0 + c + g / 1000,
                          "attrs": json.dumps({"prompt": "p" * 200, "reply": "r" * 200})})
        if len(batch) > 20_000:
            store.add_spans(batch)
            batch = []
    store.add_spans(batch)
    store.close()
    return {"run_id": run_id, "experiment_id": eid, "completions": completions, "spans": spans}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    tmp = Path(tempfile.mkdtemp(prefix="view-bench-"))
    t0 = time.perf_counter()
    info = build(tmp / "out")
    build_s = time.perf_counter() - t0
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    token = "bench-" + os.urandom(8).hex()
    server = subprocess.Popen([sys.executable, "-m", "ouroboros", "view", str(tmp / "out"), "--port", str(port),
                               "--token-env", "VIEW_BENCH_TOKEN"], env={**os.environ, "VIEW_BENCH_TOKEN": token},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(a)
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        import urllib.request

        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/?token={token}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        browser.get(f"{base}/?token={token}")  # the cookie carries the token from here on
        rid, eid = info["run_id"], info["experiment_id"]
        pages = {"runs": "/", "run": f"/d/0/run/{rid}", "completions": f"/d/0/run/{rid}/completions",
                 "completions, last page": f"/d/0/run/{rid}/completions?offset=49950",
                 "completions, text filter": f"/d/0/run/{rid}/completions?text=412+metres+long",
                 "completion": f"/d/0/run/{rid}/c/r9-t1249-s3", "prompt across versions": f"/d/0/run/{rid}/prompt/t7",
                 "experiments": "/d/0/experiments", "experiment (span tree)": f"/d/0/experiment/{eid}",
                 "span children (99)": f"/d/0/experiment/{eid}/spans?parent=c500", "span": "/d/0/span/c999-g98",
                 "rate queue": f"/d/0/run/{rid}/rate"}
        results = {}
        peak = 0.0
        for name, path in pages.items():
            paints = []
            for _ in range(args.repeat):
                browser.get(base + path)
                fcp = browser.execute_script(
                    "const e = performance.getEntriesByName('first-contentful-paint')[0]; return e ? e.startTime : null")
                paints.append(fcp if fcp is not None else browser.execute_script(
                    "return performance.timing.domContentLoadedEventEnd - performance.timing.navigationStart"))
                peak = max(peak, rss_mb(server.pid))
            results[name] = {"median_ms": round(statistics.median(paints), 1), "max_ms": round(max(paints), 1)}
        out = {"when": time.strftime("%Y-%m-%d"), "host_cpus": os.cpu_count(), **info, "build_s": round(build_s, 1),
               "db_mb": round((tmp / "out" / "ouroboros.db").stat().st_size / 1e6, 1),
               "server_rss_mb_peak": round(peak, 1), "repeat": args.repeat, "first_contentful_paint": results}
        print(json.dumps(out, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    finally:
        browser.quit()
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
