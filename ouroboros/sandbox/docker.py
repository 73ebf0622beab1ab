"""The `docker` backend: programs in a warm container per experiment, through the docker SDK.

The container (from `ouroboros-sandbox:base`, or an environment built from a Dockerfile):
- runs `sleep infinity` under Docker's init as PID 1, as uid 0 with *no* capabilities;
  every exec runs as uid/gid 65534, so a program can neither signal nor ptrace PID 1;
- has a read-only root, a tmpfs /tmp, and the host workdir (`workdir.HostWorkdir`, a size-
  capped tmpfs when we are root) bind-mounted at /work as its only writable, persistent place;
- drops every capability, sets no-new-privileges, uses private PID, IPC, UTS and network
  namespaces (no network, outside the engine's network code, unless the config enables it),
  and caps memory (no swap), pids, CPU and file size (`fsize` ulimit);
- gets the environment allowlist per exec, never the harness's environment;
- carries the labels `ouroboros.run` and `ouroboros.owner` (see `reaper.py`).

A warm container serves one experiment: `reset()` removes it together with its workdir, and
the next exec starts a new one. An exec reads the multiplexed stream itself with a deadline; at
the timeout, or when the main process has exited, every uid-65534 process in the container is
SIGKILLed (`kill -9 -1` as that uid), so nothing outlives the exec.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import select
import socket
import struct
import tarfile
import threading
import time
from typing import Sequence

from ouroboros.sandbox import dockerfile, reaper, runner
from ouroboros.sandbox.base import BuildFailed, Limits, Sandbox, SandboxError, SandboxUnavailable
from ouroboros.sandbox.local import _argv, write_inputs
from ouroboros.sandbox.workdir import HostWorkdir, check_path
from ouroboros.types import ExecResult

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "ouroboros-sandbox:base"
ENV_REPO = "ouroboros-env"
SANDBOX_USER = "65534:65534"
INSTALL_HINT = (
    "install an engine with `apt-get install -y docker.io` and start it with "
    "`cluster/start_dockerd.sh` (or `systemctl start docker`)"
)
IMAGE_HINT = "build it with `cluster/build_sandbox_image.sh` (no registry is needed)"
POLL_S = 0.05  # while waiting on output, how often to ask whether the main process exited
BUILD_LOG_BYTES = 64 * 1024

_reaped = False


def _client():
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - it is in requirements.txt
        raise SandboxUnavailable("the docker SDK is not installed: pip install docker") from exc
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        raise SandboxUnavailable(f"no Docker engine answers ({exc}); {INSTALL_HINT}") from None
    return client


STUCK_HINT = ("it may be stuck (`docker info` hangs too): restart it with `cluster/start_dockerd.sh` "
              "(or `systemctl restart docker`)")


def _engine_answers(method):
    """An engine call that times out or loses its connection is a SandboxError that says so,
    not a raw `requests` exception: a wedged engine (a container removal that never ends
    holds its locks) otherwise surfaces as `ReadTimeout: None` in every experiment."""
    import functools

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        import requests

        try:
            return method(self, *args, **kwargs)
        except requests.exceptions.RequestException as exc:
            raise SandboxError(f"the Docker engine did not answer {method.__name__} ({type(exc).__name__}); "
                               f"{STUCK_HINT}") from None
    return wrapped


class DockerSandbox(Sandbox):
    name = "docker"

    def __init__(
        self,
        limits: Limits | None = None,
        env: dict[str, str] | None = None,
        network: bool = False,
        image: str = DEFAULT_IMAGE,
        run_id: str = "adhoc",
        gpus: int = 0,
        python: str = "python3",
        build_timeout_s: float = 600.0,
        build_memory_mb: int = 2048,
        build_network: bool = False,
        keep_images: int = 5,
    ):
        global _reaped
        import docker.errors

        self._errors = docker.errors
        self.limits = limits or Limits()
        self.network = network
        self.gpus = gpus
        self.python = python
        self.build_timeout_s = build_timeout_s
        self.build_memory_mb = build_memory_mb
        self.build_network = build_network
        if keep_images < 1:
            raise ValueError(f"keep_images must be at least 1, not {keep_images}")
        self.keep_images = keep_images
        self.extra_env = dict(env or {})
        self.env = runner.base_env("/work", self.extra_env)
        self.client = _client()
        try:
            base = self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise SandboxUnavailable(f"the sandbox image {image!r} is missing; {IMAGE_HINT}") from None
        self.base_image = image
        self.environment = base.id  # what the next container starts from
        self.allowed_images = {image, base.id}
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", run_id):
            raise ValueError(f"run id {run_id!r} must be 1-64 letters, digits, '.', '_' or '-'")
        self.labels = {reaper.RUN_LABEL: run_id, reaper.OWNER_LABEL: reaper.owner_label()}
        if not _reaped:
            _reaped = True
            reaper.reap(self.client)
        reaper.Janitor.ensure().track_docker()
        self._workdir: HostWorkdir | None = None
        # What each environment this sandbox built was built from: another session's build may
        # prune it (keep_images) before this one starts a container of it, and then it is built
        # again rather than lost.
        self._sources: dict[str, tuple[str, dict]] = {}
        self._container = None
        self._closed = False  # set by cleanup(): a call still in flight then makes nothing new
        self._container_key: tuple | None = None
        self._cgroup_dirs: dict[str, str] = {}

    # ------------------------------------------------------------------ files

    def workdir(self) -> HostWorkdir:
        if self._closed:
            raise SandboxError("this sandbox was closed")
        if self._workdir is None:
            uid = int(SANDBOX_USER.split(":")[0])
            # Owned by the sandbox uid; without root we cannot chown, and the program (65534)
            # may then only write where the harness left the workdir writable.
            ids = (uid, uid) if os.geteuid() == 0 else None
            self._workdir = HostWorkdir(reaper.owner_token(), ids, self.limits.disk_mb)
            if ids is None:
                os.chmod(self._workdir.path, 0o777)
        return self._workdir

    @_engine_answers
    def write_file(self, path: str, data: str | bytes) -> None:
        self.workdir().write(path, data)

    @_engine_answers
    def read_file(self, path: str, max_bytes: int = 16 << 20) -> bytes:
        return self.workdir().read(path, max_bytes)

    # ------------------------------------------------------------------ container

    @_engine_answers
    def prewarm(self) -> None:
        self._ensure_container(self.limits)

    def _ensure_container(self, limits: Limits):
        key = (self.environment, limits.memory_mb, limits.pids, limits.cpus, limits.disk_mb)
        if self._container is not None and self._container_key == key:
            return self._container
        self._remove_container()
        import docker.types

        mem = f"{limits.memory_mb}m"
        disk = limits.disk_mb * runner.MIB
        kwargs = dict(
            image=self.environment,
            # Everything an image could run on its own is overridden: its ENTRYPOINT (it would run
            # as uid 0 beside our execs), its HEALTHCHECK, and its logging (PID 1's output would
            # fill an uncapped json log on the host's disk).
            entrypoint=["sleep"],
            command=["infinity"],
            healthcheck={"test": ["NONE"]},
            log_config=docker.types.LogConfig(type="none"),
            detach=True,
            init=True,
            user="0:0",
            working_dir="/work",
            hostname="sandbox",
            network_mode="bridge" if self.network else "none",
            # Without network, the container gets a fresh namespace holding only loopback (runc
            # brings it up) and the engine's network code is skipped altogether. `--network none`
            # alone still joins its libnetwork sandbox: twice the start time (320 against 148 ms
            # median here), and docker.io 20.10's libnetwork deadlocked under a long run's container
            # churn (its endpoint watch loop held the controller's lock waiting for a network's,
            # container starts and exits the other way round), which hung every later engine call
            # (benchmarks/README.md, "A long run").
            network_disabled=not self.network,
            ipc_mode="private",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=True,
            tmpfs={"/tmp": f"size={mem},mode=1777", "/dev/shm": f"size={mem},mode=1777"},
            volumes={self.workdir().path: {"bind": "/work", "mode": "rw"}},
            mem_limit=mem,
            memswap_limit=mem,
            pids_limit=limits.pids + 2,  # docker-init and sleep
            nano_cpus=int(limits.cpus * 1e9),
            ulimits=[docker.types.Ulimit(name="fsize", soft=disk, hard=disk),
                     docker.types.Ulimit(name="core", soft=0, hard=0)],
            labels=self.labels,
            environment={},
        )
        if self.gpus:
            kwargs["device_requests"] = [docker.types.DeviceRequest(count=self.gpus, capabilities=[["gpu"]])]
        # Created, then started: `containers.run` would try to pull a missing image from a
        # registry. An environment of ours that another session's build pruned (keep_images)
        # since this session switched to it is built again, and the start retried.
        for attempt in range(3):
            if self._pruned(self.environment):
                self.environment = self._rebuild(self.environment)
            kwargs["image"] = self.environment
            container = None
            try:
                container = self.client.containers.create(**{k: v for k, v in kwargs.items() if k != "detach"})
                container.start()
                self._container = container
                break
            except self._errors.DockerException as exc:
                if container is not None:
                    try:
                        container.remove(force=True)
                    except self._errors.DockerException:
                        pass
                if attempt < 2 and self._pruned(self.environment):
                    continue
                raise SandboxError(f"could not start a sandbox container from {self.environment[:19]}: {exc}") from exc
        key = (self.environment, *key[1:])
        self._container_key = key
        self._cgroup_dirs = _cgroup_dirs(self._container.id)
        return self._container

    def _remove_container(self) -> None:
        container, self._container, self._container_key = self._container, None, None
        if container is not None:
            try:
                container.remove(force=True, v=True)  # v: anonymous volumes go too
            except self._errors.NotFound:
                pass
            except self._errors.DockerException as exc:
                log.warning("could not remove sandbox container %s: %s (the reaper retries)", container.short_id, exc)

    @_engine_answers
    def reset(self) -> None:
        self._remove_container()
        if self._workdir is not None:
            workdir, self._workdir = self._workdir, None
            workdir.remove()

    # ------------------------------------------------------------------ exec

    @_engine_answers
    def exec(
        self,
        program: str | None = None,
        *,
        command: Sequence[str] | None = None,
        files: dict[str, str | bytes] | None = None,
        limits: Limits | None = None,
    ) -> ExecResult:
        argv = _argv(program, command, self.python)
        names = {check_path(name): data for name, data in (files or {}).items()}
        limits = limits or self.limits
        workdir = self.workdir()
        failed = write_inputs(workdir, program, names)
        if failed is not None:
            return failed
        container = self._ensure_container(limits)
        ooms_before = self._oom_kills()
        api = self.client.api
        try:
            exec_id = api.exec_create(container.id, argv, stdout=True, stderr=True, user=SANDBOX_USER,
                                      workdir="/work", environment=self.env)["Id"]
            sock = api.exec_start(exec_id, socket=True)
        except self._errors.DockerException as exc:
            self._remove_container()  # whatever state it is in, the next exec gets a fresh one
            raise SandboxError(f"docker exec failed: {exc}") from exc
        outcome = self._collect(sock, exec_id, container, limits)
        oom = self._oom_kills() > ooms_before
        result = runner.build_result(outcome, oom)
        result.image = self.environment
        return result

    def _collect(self, sock, exec_id: str, container, limits: Limits) -> runner.Outcome:
        start = time.monotonic()
        deadline = start + limits.timeout_s
        out, err = runner._Capped(limits.output_bytes), runner._Capped(limits.output_bytes)
        frames = _FrameReader(sock)
        timed_out = False
        end = None
        stop_at = deadline
        next_check = start + POLL_S
        try:
            while True:
                now = time.monotonic()
                if now >= stop_at:
                    if end is None and not self._running(exec_id):
                        # Exited in time; only the engine was slow to close the stream (seen
                        # under load). Not a timeout: the program's result stands.
                        end = now
                    elif end is None:
                        timed_out, end = True, now
                    # Keep reading while the kill runs: an engine blocked on a full stream may
                    # not start another exec in this container until the stream moves.
                    killer = threading.Thread(target=self._kill_programs, args=(container,), daemon=True)
                    killer.start()
                    frames.drain(out, err, time.monotonic() + runner.KILL_DRAIN_S)
                    frames.close()
                    killer.join(30)
                    break
                if frames.pump(out, err, min(POLL_S, stop_at - now)):
                    break  # EOF: the process and everything holding its pipes are gone
                if end is None and time.monotonic() >= next_check:
                    next_check = time.monotonic() + POLL_S
                    if not self._running(exec_id):
                        end = time.monotonic()  # main exited; give its pipes a grace, then clean up
                        stop_at = min(stop_at, end + runner.EXIT_GRACE_S)
        finally:
            frames.close()
        end = end or time.monotonic()
        code = self._exit_code(exec_id)
        if self._has_programs(container):  # a daemon that outlived the main process
            self._kill_programs(container)
        if timed_out or code is None:
            code = 128 + 9
        return runner.Outcome(returncode=code, stdout=out.value(), stderr=err.value(), stderr_tail=err.tail,
                              truncated=out.truncated or err.truncated, timed_out=timed_out,
                              duration_s=end - start)

    def _running(self, exec_id: str) -> bool:
        try:
            return bool(self.client.api.exec_inspect(exec_id)["Running"])
        except self._errors.DockerException:
            return False

    def _exit_code(self, exec_id: str) -> int | None:
        for _ in range(40):  # the engine records the exit a moment after the stream ends
            try:
                info = self.client.api.exec_inspect(exec_id)
            except self._errors.DockerException:
                return None
            if not info["Running"] and info["ExitCode"] is not None:
                return int(info["ExitCode"])
            time.sleep(0.005)
        return None

    def _has_programs(self, container) -> bool:
        """Whether anything besides init and sleep runs (unknowable without the cgroup: assume so)."""
        procs = self._cgroup_dirs.get("pids")
        if procs is None:
            return True
        try:
            with open(os.path.join(procs, "cgroup.procs")) as fh:
                return sum(1 for line in fh if line.strip()) > 2
        except OSError:
            return True

    def _kill_programs(self, container) -> None:
        """SIGKILL every process of the sandbox uid in the container (PID 1 runs as another).

        The kill runs detached (no stream to attach), and we wait until the cgroup is down to
        init and sleep, or, where the cgroup cannot be read, until the kill exec has finished.
        """
        api = self.client.api
        for _ in range(3):
            try:
                kill_id = api.exec_create(container.id, ["kill", "-9", "-1"], user=SANDBOX_USER)["Id"]
                api.exec_start(kill_id, detach=True)
            except self._errors.DockerException as exc:
                log.warning("could not kill the programs in %s (%s); removing the container", container.short_id, exc)
                self._remove_container()
                return
            for _ in range(200):
                if "pids" in self._cgroup_dirs:
                    if not self._has_programs(container):
                        return
                elif not self._running(kill_id):
                    return
                time.sleep(0.005)
        if self._has_programs(container):
            log.warning("programs in %s survived kill -9 -1; removing the container", container.short_id)
            self._remove_container()

    def _oom_kills(self) -> int:
        return runner.oom_kills(self._cgroup_dirs.get("memory"))

    # ------------------------------------------------------------------ environments

    @_engine_answers
    def build(self, dockerfile_text: str, files: dict[str, str | bytes] | None = None,
              limits: Limits | None = None) -> str:
        """Build `dockerfile_text` (no network, time and memory limits) and return the image id."""
        for attempt in range(3):
            try:
                return self._build_once(dockerfile_text, files, limits)
            except _Pruned as exc:
                # Another session's prune (keep_images) removed a cached layer this build
                # started from, or the result before it was looked up: build it again.
                if attempt == 2:
                    raise BuildFailed(str(exc), exc.log) from None
                log.info("a build raced a prune (%s); building again", exc)
        raise AssertionError("unreachable")

    def _build_once(self, dockerfile_text: str, files: dict[str, str | bytes] | None,
                    limits: Limits | None) -> str:
        if not isinstance(dockerfile_text, str):
            raise BuildFailed("the Dockerfile must be text")
        allowed = self.allowed_images | _our_images(self.client)
        problems = dockerfile.check(dockerfile_text, allowed)
        if problems:
            raise BuildFailed("the Dockerfile was refused: " + "; ".join(problems), "\n".join(problems))
        context = _context_tar(dockerfile_text, files or {})
        digest = hashlib.sha256(context.getvalue()).hexdigest()[:16]
        tag = f"{ENV_REPO}:{self.labels[reaper.RUN_LABEL]}-{digest}"
        timeout_s = (limits.timeout_s if limits else None) or self.build_timeout_s
        log_lines: list[str] = []
        failure: list[str] = []
        image_id: list[str] = []
        import docker

        api = docker.from_env(timeout=int(timeout_s) + 30).api

        def run() -> None:
            try:
                for chunk in api.build(
                    fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True, pull=False,
                    network_mode="default" if self.build_network else "none",
                    container_limits={"memory": self.build_memory_mb * runner.MIB,
                                      "memswap": self.build_memory_mb * runner.MIB,
                                      "cpushares": 512},
                    labels=self.labels, decode=True,
                ):
                    if "stream" in chunk:
                        log_lines.append(chunk["stream"])
                    if "error" in chunk:
                        failure.append(str(chunk["error"]).strip())
                    if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                        image_id.append(chunk["aux"]["ID"])
            except Exception as exc:  # engine errors and the close below both end the build
                failure.append(f"{type(exc).__name__}: {exc}")

        worker = threading.Thread(target=run, name="docker-build", daemon=True)
        worker.start()
        worker.join(timeout_s)
        timed_out = worker.is_alive()

        def layers():
            return re.findall(r"---> (?:Running in )?([0-9a-f]{12})", "".join(log_lines))
        if timed_out:
            running = re.findall(r"---> Running in ([0-9a-f]{12})", "".join(log_lines))
            for cid in running[-1:]:
                try:
                    self.client.containers.get(cid).remove(force=True)
                except self._errors.DockerException:
                    pass
            api.close()
            worker.join(10)
        text = _tail("".join(log_lines), BUILD_LOG_BYTES)
        # Untagged layers the build left: all of them after a failure, and after a success the
        # stages that are not ancestors of the result (removal of an ancestor fails, harmlessly).
        for ident in reversed(layers()):
            try:
                img = self.client.images.get(ident)
                if not img.tags and img.id not in self.allowed_images:
                    self.client.images.remove(img.id, force=False, noprune=True)
            except self._errors.DockerException:
                pass
        if timed_out:
            raise BuildFailed(f"the build did not finish within {timeout_s:g} s and was cancelled", text)
        if failure:
            raced = ("unknown parent image", "failed to get digest")  # a cached layer pruned mid-build
            error = _Pruned if any(r in failure[-1] for r in raced) else BuildFailed
            raise error(f"the build failed: {failure[-1][:500]}", text + "\n" + failure[-1])
        try:
            image = self.client.images.get(tag)
        except self._errors.DockerException as exc:
            raise _Pruned(f"the build reported success but {tag} is missing: {exc}", text) from None
        self._sources[image.id] = (dockerfile_text, dict(files or {}))
        self._prune_environments(keep=image.id)
        return image.id

    def _prune_environments(self, keep: str) -> int:
        """Hold this run's built environments to `keep_images` (the newest; the original system's
        KeepLastNImages): a run that builds an environment every cycle would otherwise fill the
        engine's disk. Never removes `keep` (just built), the environment this sandbox uses, or
        one a container uses (the engine refuses that removal, and the image stays). Other runs'
        images are theirs to prune. Returns how many were removed."""
        try:  # the low-level list: the high-level one fetches each image again, racing other prunes
            listed = self.client.api.images(filters={"label": f"{reaper.RUN_LABEL}={self.labels[reaper.RUN_LABEL]}"})
        except self._errors.DockerException as exc:
            log.warning("could not list this run's environments to prune them: %s", exc)
            return 0
        built = [i for i in listed if any(t.startswith(ENV_REPO + ":") for t in i.get("RepoTags") or ())]
        if len(built) <= self.keep_images:
            return 0

        def last_built(image: dict) -> str:
            # When it was last tagged: a build that reuses an image from the cache tags it
            # again, so an old image just rebuilt counts as new (its `Created` stays old).
            try:
                info = self.client.api.inspect_image(image["Id"])
            except self._errors.DockerException:
                return ""
            return (info.get("Metadata") or {}).get("LastTagTime") or info.get("Created") or ""

        stamps = {i["Id"]: last_built(i) for i in built}
        built.sort(key=lambda i: (i["Id"] == keep, stamps[i["Id"]]), reverse=True)
        removed = 0
        for image in built[self.keep_images:]:
            if image["Id"] in (keep, self.environment) or image["Id"] in self.allowed_images:
                continue
            try:
                for tag in image["RepoTags"]:  # by tag: an id with two tags would need force
                    self.client.images.remove(tag, force=False, noprune=False)
                removed += 1
            except self._errors.DockerException:
                pass  # in use by a container, or pruned by another runner first
        return removed

    def _pruned(self, environment: str) -> bool:
        """Whether `environment`, built by this sandbox, is gone (another session's prune)."""
        if environment not in self._sources:
            return False
        try:
            self.client.api.inspect_image(environment)
            return False
        except self._errors.NotFound:
            return True
        except self._errors.DockerException as exc:
            raise SandboxError(f"the Docker engine did not say whether {environment[:19]} exists: {exc}") from None

    def _rebuild(self, environment: str) -> str:
        """`environment` was pruned (keep_images) by another session's build before a container
        of it started here: build it again from the Dockerfile it came from."""
        text, files = self._sources.pop(environment)
        log.info("environment %s was pruned before its first use here; building it again", environment[:19])
        try:
            return self.build(text, files)
        except BuildFailed as exc:
            raise SandboxError(f"environment {environment[:19]} was removed to hold sandbox.keep_images, and "
                               f"building it again failed: {exc} (if this repeats, raise sandbox.keep_images)") from None

    @_engine_answers
    def use_environment(self, environment: str) -> None:
        if self._pruned(environment):
            environment = self._rebuild(environment)
        try:
            image = self.client.images.get(environment)
        except self._errors.ImageNotFound:
            raise SandboxError(f"no environment {environment!r}; build one first") from None
        if image.id not in self.allowed_images and (image.labels or {}).get(reaper.RUN_LABEL) is None:
            raise SandboxError(f"image {environment!r} was not built by Ouroboros; refusing to run it")
        if (image.attrs.get("Config") or {}).get("Volumes"):
            raise SandboxError(f"image {environment!r} declares volumes, which would bypass the disk cap")
        if image.id != self.environment:
            self.environment = image.id
            self._remove_container()  # the workdir stays; the next exec starts the new image

    def cleanup(self) -> None:
        self._closed = True
        self.reset()


# ---------------------------------------------------------------------------- helpers


class _Pruned(BuildFailed):
    """A build lost a race with another session's prune (keep_images); building again works."""


class _FrameReader:
    """Reads Docker's multiplexed exec stream (8-byte header: stream, 0, 0, 0, length) off a raw
    socket, with deadlines, into capped buffers."""

    def __init__(self, sock):
        self.sock = sock
        self.raw = sock._sock if hasattr(sock, "_sock") else sock
        self.buffer = b""
        self.eof = False

    def _fill(self, timeout: float) -> bool:
        """Read what is available within `timeout`. True at EOF."""
        ready, _, _ = select.select([self.raw], [], [], max(0.0, timeout))
        if not ready:
            return False
        try:
            chunk = self.raw.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            chunk = b""
        if not chunk:
            self.eof = True
            return True
        self.buffer += chunk
        return False

    def _split(self, out, err) -> None:
        while len(self.buffer) >= 8:
            kind, size = self.buffer[0], struct.unpack(">I", self.buffer[4:8])[0]
            if len(self.buffer) < 8 + size:
                if size > len(self.buffer) + (1 << 22):
                    pass  # large frame: keep reading
                return
            payload, self.buffer = self.buffer[8:8 + size], self.buffer[8 + size:]
            (err.add(payload, True) if kind == 2 else out.add(payload, False))

    def pump(self, out, err, timeout: float) -> bool:
        eof = self._fill(timeout)
        self._split(out, err)
        return eof

    def drain(self, out, err, until: float) -> None:
        while not self.eof and time.monotonic() < until:
            self.pump(out, err, until - time.monotonic())

    def close(self) -> None:
        try:
            self.raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


def _cgroup_dirs(container_id: str) -> dict[str, str]:
    """Host paths of the container's cgroup v1 pids and memory directories, where readable."""
    found = {}
    for controller in ("pids", "memory"):
        for parent in ("docker", f"system.slice/docker-{container_id}.scope"):
            path = os.path.join(runner.CGROUP_ROOT, controller, parent)
            path = path if parent.endswith(".scope") else os.path.join(path, container_id)
            if os.path.isdir(path):
                found[controller] = path
                break
    return found


def _our_images(client) -> set[str]:
    """Environments built by Ouroboros on this engine (any run): tags and ids."""
    names: set[str] = set()
    # The low-level list: the high-level one fetches each listed image again, and fails if
    # another session's build pruned one meanwhile (keep_images).
    for image in client.api.images(filters={"label": reaper.RUN_LABEL}):
        names.add(image["Id"])
        names.update(t for t in image.get("RepoTags") or () if t != "<none>:<none>")
    return names


def _context_tar(dockerfile_text: str, files: dict[str, str | bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        names = {check_path(k): v for k, v in files.items()}
        if {"Dockerfile", ".dockerignore"} & set(names):  # the checked text must be what builds
            raise BuildFailed("build context files may not be named 'Dockerfile' or '.dockerignore'")
        entries = {**names, "Dockerfile": dockerfile_text}
        for name, data in entries.items():
            payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(payload), 0o644, 0
            tar.addfile(info, io.BytesIO(payload))
    buf.seek(0)
    return buf


def _tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "[... build log truncated ...]\n" + text[-limit:]
