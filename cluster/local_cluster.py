"""A real multi-node Ray cluster on this machine, on loopback: a head and N worker nodes, each
its own raylet with its own resources, as `ray up` would give on cloud machines.

    .venv/bin/python cluster/local_cluster.py [--workers 2] [--fake-gpus 1] [--info FILE]

The head runs the GCS and the job server (the dashboard, for `ray job submit`) and offers no
CPUs, so no actor lands on it. Each worker node offers `--cpus` CPUs and `--sandbox`
sandbox slots (the `sandbox` resource SandboxRunners ask for); the last worker also advertises
`--fake-gpus` GPUs, for placement tests (nothing runs on them). The script prints the
addresses, writes them to `--info` as JSON, and keeps the cluster up until Ctrl-C or SIGTERM,
then stops its own nodes only (never `ray stop`, which would stop every Ray on the host).

Submit the main job to it as on a real cluster:

    ray job submit --address http://127.0.0.1:8265 -- bash "$PWD/cluster/job.sh" configs/smoke.yaml
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="worker nodes (default 2)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs each worker node offers")
    ap.add_argument("--sandbox", type=int, default=2, help="sandbox slots each worker node offers")
    ap.add_argument("--fake-gpus", type=int, default=0, help="GPUs the last worker node advertises")
    ap.add_argument("--dashboard-port", type=int, default=8265, help="the job server's port (0: any free one)")
    ap.add_argument("--info", default="", help="write the addresses here as JSON once every node is up")
    ap.add_argument("--wait-s", type=float, default=120.0, help="how long the head's job server may take to answer")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    # Loopback only: Ray would otherwise swap 127.0.0.1 for this machine's network address when a
    # node's agents connect back (and the GCS, bound to loopback, would not answer them). Every
    # process of the cluster, and each job's driver, inherits these.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no report to Ray's servers

    from ray.cluster_utils import Cluster

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    started = time.monotonic()
    port = args.dashboard_port or _free_port()
    # Every node on loopback: the cluster is reachable from this machine only.
    cluster = Cluster(initialize_head=True, head_node_args={
        "node_ip_address": "127.0.0.1", "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": port, "object_store_memory": 200 * 1024 * 1024,
        # Ray's fixed default (52365) is held by any other Ray on the host (a laptop run, another
        # test): the head's agent, which runs submitted jobs, would not start, and no job would.
        "dashboard_agent_listen_port": _free_port()})
    try:
        nodes = []
        for i in range(args.workers):
            gpus = args.fake_gpus if i == args.workers - 1 else 0
            node = cluster.add_node(node_ip_address="127.0.0.1", num_cpus=args.cpus, num_gpus=gpus,
                                    resources={"sandbox": args.sandbox}, object_store_memory=200 * 1024 * 1024)
            nodes.append({"node_id": node.node_id, "cpus": args.cpus, "sandbox": args.sandbox, "gpus": gpus})
        cluster.wait_for_nodes()
        _wait_for_job_server(port, args.wait_s)
        info = {"address": cluster.address, "dashboard": f"http://127.0.0.1:{port}",
                "head_node_id": cluster.head_node.node_id, "workers": nodes,
                "started_s": round(time.monotonic() - started, 1)}
        print(json.dumps(info), flush=True)
        if args.info:
            tmp = Path(args.info + ".tmp")
            tmp.write_text(json.dumps(info))
            tmp.replace(args.info)  # whole or absent: a reader never sees half of it
        print(f"cluster up: RAY_ADDRESS={cluster.address}; jobs: ray job submit --address {info['dashboard']} "
              f"-- ...; Ctrl-C stops it", file=sys.stderr, flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        cluster.shutdown()
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_job_server(port: int, timeout_s: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"the head's job server did not answer on 127.0.0.1:{port} within {timeout_s:.0f} s")
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
