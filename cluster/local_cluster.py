"""A real multi-node Ray cluster on this machine, on loopback: a head and N worker nodes, each
its own raylet with its own resources, as `ray up` would give on cloud machines.

    .venv/bin/python cluster/local_cluster.py [--workers 2] [--fake-gpus 1] [--info FILE]

The head runs the GCS and the job server (the dashboard, for `ray job submit`) and offers no
CPUs, so no actor lands on it. Each worker node offers `--cpus` CPUs and `--sandbox`
sandbox slots (the `sandbox` resource SandboxRunners ask for); the last worker also advertises
`--fake-gpus` GPUs, for placement tests (nothing runs on them). The script prints the
addresses, writes them to `--info` as JSON, and keeps the cluster up until Ctrl-C or SIGTERM,
then stops its own nodes only (never `ray stop`, which would stop every Ray on the host).

SIGUSR1 takes a worker node away as a lost machine would go: every process of it is killed at
once (raylet, object store, agents and the actors' workers), with no drain. The node removed is
the one whose id is in the file `--remove-from` names, or else the last worker still up; the
script prints `removed node ID` and adds the id to the info file's `removed` list.

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
    ap.add_argument("--remove-from", default="", help="on SIGUSR1, remove the worker node whose id this file holds")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    # Loopback only: Ray would otherwise swap 127.0.0.1 for this machine's network address when a
    # node's agents connect back (and the GCS, bound to loopback, would not answer them). Every
    # process of the cluster, and each job's driver, inherits these.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no report to Ray's servers

    from ray.cluster_utils import Cluster

    wake = threading.Event()
    asked = {"stop": False, "remove": 0}

    def on_signal(signum, _frame):
        if signum == signal.SIGUSR1:
            asked["remove"] += 1
        else:
            asked["stop"] = True
        wake.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, on_signal)
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
        nodes, handles = [], {}
        for i in range(args.workers):
            gpus = args.fake_gpus if i == args.workers - 1 else 0
            node = cluster.add_node(node_ip_address="127.0.0.1", num_cpus=args.cpus, num_gpus=gpus,
                                    resources={"sandbox": args.sandbox}, object_store_memory=200 * 1024 * 1024)
            nodes.append({"node_id": node.node_id, "cpus": args.cpus, "sandbox": args.sandbox, "gpus": gpus})
            handles[node.node_id] = node
        cluster.wait_for_nodes()
        _wait_for_job_server(port, args.wait_s)
        info = {"address": cluster.address, "dashboard": f"http://127.0.0.1:{port}",
                "head_node_id": cluster.head_node.node_id, "workers": nodes,
                "started_s": round(time.monotonic() - started, 1)}
        print(json.dumps(info), flush=True)
        _write_info(args.info, info)
        print(f"cluster up: RAY_ADDRESS={cluster.address}; jobs: ray job submit --address {info['dashboard']} "
              f"-- ...; Ctrl-C stops it; kill -USR1 {os.getpid()} removes a worker node", file=sys.stderr, flush=True)
        while not asked["stop"]:
            wake.wait()
            wake.clear()
            while asked["remove"] and not asked["stop"]:
                asked["remove"] -= 1
                node_id = _node_to_remove(args.remove_from, handles)
                if node_id is None:
                    print("no worker node left to remove", file=sys.stderr, flush=True)
                    continue
                # allow_graceful=False: SIGKILL for every process of the node, as a machine that is lost.
                cluster.remove_node(handles.pop(node_id), allow_graceful=False)
                info.setdefault("removed", []).append(node_id)
                _write_info(args.info, info)
                print(f"removed node {node_id}", file=sys.stderr, flush=True)
    finally:
        cluster.shutdown()
    return 0


def _node_to_remove(named_in: str, handles: dict) -> str | None:
    """The id in the file `named_in` if it is a worker still up, else the last worker still up."""
    named = Path(named_in).read_text().strip() if named_in and Path(named_in).is_file() else ""
    if named in handles:
        return named
    return next(reversed(handles), None)


def _write_info(path: str, info: dict) -> None:
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(path)  # whole or absent: a reader never sees half of it


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
