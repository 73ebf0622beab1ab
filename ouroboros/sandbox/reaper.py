"""Removing what sandboxes leave behind when the process that owned them is gone.

Everything a sandbox makes is tagged with its owner, the process that made it:
workdirs live under `workdir.ROOT/<owner>/`, and containers and images carry the labels
`ouroboros.owner=<host>/<owner>` and `ouroboros.run=<run id>`. An owner token is
`<pid>-<start time>`, so a recycled pid is not mistaken for the old owner.

Two paths remove leftovers:
- `reap()` at start-up: whatever belongs to owners on this host that are no longer alive.
  It only ever looks at our workdir root and at Docker objects with our label.
- `Janitor`: a watcher process per owner. It blocks on a pipe from the owner; when the owner
  dies (even by SIGKILL, as `ray.kill` does) the pipe closes and the janitor removes that
  owner's containers, workdirs and sandbox-uid processes at once, mid-exec included.
"""
from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading

from ouroboros.sandbox import workdir

log = logging.getLogger(__name__)

RUN_LABEL = "ouroboros.run"
OWNER_LABEL = "ouroboros.owner"


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rpartition(b")")[2].split()[19].decode()
    except (OSError, IndexError):
        return None


@functools.lru_cache(maxsize=None)
def _owner_for(pid: int) -> str:
    return f"{pid}-{_start_time(pid)}"


def owner_token() -> str:
    """This process as an owner: `<pid>-<start time>` (cached per pid, so forks get their own)."""
    return _owner_for(os.getpid())


def host() -> str:
    return socket.gethostname()


def owner_label() -> str:
    return f"{host()}/{owner_token()}"


def is_alive(token: str) -> bool:
    pid, _, started = token.partition("-")
    return pid.isdigit() and _start_time(int(pid)) == started


# ----------------------------------------------------------------------------- workdirs


def reap_workdirs(only: str | None = None) -> int:
    """Remove workdirs of dead owners (or of owner `only`). Returns how many owners were reaped."""
    try:
        owners = os.listdir(workdir.ROOT)
    except FileNotFoundError:
        return 0
    reaped = 0
    for token in owners:
        if not workdir.OWNER_NAME.match(token):
            continue  # not an owner token: not ours to judge
        if (only is not None and token != only) or (only is None and is_alive(token)):
            continue
        base = workdir.owner_dir(token)
        if os.path.islink(base) or not os.path.isdir(base):
            continue
        try:
            for name in os.listdir(base):
                if not os.path.islink(os.path.join(base, name)):
                    workdir.remove_tree(os.path.join(base, name))
                else:
                    os.unlink(os.path.join(base, name))
            os.rmdir(base)
            reaped += 1
        except OSError as exc:
            log.warning("could not remove leftover sandbox workdirs in %s: %s", base, exc)
    return reaped


# ----------------------------------------------------------------------------- docker


def reap_docker(client, only: str | None = None) -> tuple[int, int]:
    """Remove our containers and images whose owner on this host is dead (or is `only`).

    Only objects with the `ouroboros.owner` label are listed, and only those naming this host
    are judged: another host's owners cannot be checked from here. Returns (containers, images).
    """
    prefix = f"{host()}/"

    def dead(labels: dict) -> bool:
        owner = (labels or {}).get(OWNER_LABEL, "")
        if not owner.startswith(prefix) or RUN_LABEL not in (labels or {}):
            return False
        token = owner[len(prefix):]
        return token == only if only is not None else not is_alive(token)

    containers = images = 0
    # Objects listed may vanish before they are looked at (other runs' janitors and prunes work
    # at the same time): the container list skips those, and images come from the low-level list.
    for container in client.containers.list(all=True, filters={"label": OWNER_LABEL}, ignore_removed=True):
        if dead(container.labels):
            try:
                container.remove(force=True)
                containers += 1
            except Exception as exc:  # gone already, or the engine is busy: the next reap retries
                log.warning("could not remove leftover container %s: %s", container.short_id, exc)
    for image in client.api.images(filters={"label": OWNER_LABEL}):
        if dead(image.get("Labels")):
            try:
                client.images.remove(image["Id"], force=True, noprune=False)
                images += 1
            except Exception as exc:
                log.warning("could not remove leftover image %s: %s", image["Id"][7:19], exc)
    return containers, images


def reap(docker_client=None) -> None:
    """Start-up sweep: leftovers of dead owners on this host."""
    from ouroboros.sandbox.runner import remove_orphan_cgroups

    remove_orphan_cgroups()
    count = reap_workdirs()
    if count:
        log.info("removed sandbox workdirs of %d dead owner(s)", count)
    if docker_client is not None:
        containers, images = reap_docker(docker_client)
        if containers or images:
            log.info("removed %d leftover container(s) and %d image(s) of dead owners", containers, images)


# ----------------------------------------------------------------------------- janitor


class Janitor:
    """Starts the watcher for this process once; `track_uid` tells it which uids to kill."""

    _lock = threading.Lock()
    _instance: "Janitor | None" = None

    def __init__(self) -> None:
        self.owner = owner_token()
        read_end, self._write_end = os.pipe()
        # `setsid --fork`: the janitor runs in a new session and is not our child. Ray kills a
        # dead worker's children, and a Ctrl-C or a kill of our process group must not take
        # the janitor along before it has cleaned up.
        launcher = subprocess.Popen(
            ["setsid", "--fork", sys.executable, "-m", "ouroboros.sandbox.reaper", self.owner],
            stdin=read_end, stdout=subprocess.DEVNULL, close_fds=True,
        )
        os.close(read_end)
        os.set_inheritable(self._write_end, False)
        launcher.wait()

    @classmethod
    def ensure(cls) -> "Janitor":
        with cls._lock:
            if cls._instance is None or cls._instance.owner != owner_token():
                cls._instance = cls()
            return cls._instance

    def track_uid(self, uid: int) -> None:
        try:
            os.write(self._write_end, f"uid {uid}\n".encode())
        except OSError:
            pass

    def track_docker(self) -> None:
        try:
            os.write(self._write_end, b"docker\n")
        except OSError:
            pass


def _janitor_main(owner: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    uids: set[int] = set()
    docker_used = False
    buffer = b""
    while True:
        chunk = os.read(0, 4096)
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            kind, _, value = line.decode().partition(" ")
            if kind == "uid" and value.isdigit():
                uids.add(int(value))
            elif kind == "docker":
                docker_used = True
    # The owner is gone: remove everything it may have left.
    from ouroboros.sandbox.runner import kill_uid, remove_orphan_cgroups

    for uid in uids:
        kill_uid(uid)
    remove_orphan_cgroups(only_pid=int(owner.split("-")[0]))
    if docker_used:
        try:
            import docker

            reap_docker(docker.from_env(timeout=30), only=owner)
        except Exception as exc:
            print(f"ouroboros janitor: docker cleanup for {owner} failed: {exc}", file=sys.stderr)
    reap_workdirs(only=owner)


if __name__ == "__main__":
    _janitor_main(sys.argv[1])
