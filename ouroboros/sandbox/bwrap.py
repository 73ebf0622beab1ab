"""The `bwrap` backend: Python inside bubblewrap namespaces, with rlimits and cgroups.

What the program sees: /usr read-only (plus the merged-usr links /bin, /lib, ...), a fresh
/proc, a minimal read-only /dev, private /tmp and /dev/shm (tmpfs, each capped at the memory
limit), and its workdir at /work (read-write, the cwd). No other host file; the rest of the
root is an empty read-only tmpfs. (With `network=True` also /etc/resolv.conf, hosts,
nsswitch.conf and ssl, read-only.) It runs as uid/gid 65534 with no capabilities, in its own
user, pid, network (unless `network=True`), ipc, uts and cgroup namespaces, in a new session,
with a cleared environment: PATH, HOME=/work, LANG=C.UTF-8, PYTHONDONTWRITEBYTECODE=1 and the
allowlisted `env`. Nested user namespaces are disabled.

When the harness is root, bwrap itself is started as a fresh unprivileged host uid (see
`runner.sandbox_ids`): run by root, bwrap maps the sandbox uid to host uid 0, where
RLIMIT_NPROC does not apply and an escape would land as root.
"""
from __future__ import annotations

import os
import shutil

from ouroboros.sandbox import runner
from ouroboros.sandbox.base import Limits, Sandbox, SandboxUnavailable
from ouroboros.types import ExecResult

INSTALL_HINT = "run `apt-get install -y bubblewrap` (Debian package 'bubblewrap')"
SANDBOX_ID = "65534"  # nobody/nogroup inside the sandbox


def _system_dirs() -> list[str]:
    """bwrap arguments for /bin, /lib, /lib64, /sbin: links into /usr where merged, else binds."""
    args: list[str] = []
    for name in ("bin", "lib", "lib32", "lib64", "libx32", "sbin"):
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


class BwrapSandbox(Sandbox):
    name = "bwrap"

    def __init__(
        self,
        limits: Limits | None = None,
        python: str = "/usr/bin/python3",
        env: dict[str, str] | None = None,
        network: bool = False,
    ):
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise SandboxUnavailable(f"bubblewrap (bwrap) is not installed: {INSTALL_HINT}")
        found = shutil.which(python)
        real = os.path.realpath(found) if found else ""
        if not real.startswith("/usr/"):
            raise SandboxUnavailable(
                f"sandbox python {python!r} must be an executable under /usr (the only host tree "
                f"mounted in the sandbox), e.g. /usr/bin/python3 from Debian package 'python3'"
            )
        self.bwrap = bwrap
        self.limits = limits or Limits()
        self.python = found if found.startswith("/usr/") else real
        self.network = network
        self.env = runner.base_env("/work", env)
        # Root starts bwrap as a throwaway unprivileged uid (NPROC applies, no root on the host).
        # If this kernel refuses unprivileged user namespaces, fall back to bwrap as root.
        self.fresh_uid = os.geteuid() == 0
        self._head = self._static_args()
        # Whether bwrap works here at all: under default limits, so a tight config is not
        # mistaken for a host without unprivileged user namespaces (exec reports those).
        failure = self._probe(Limits())
        if failure and self.fresh_uid:
            self.fresh_uid = False
            as_root = self._probe(Limits())
            if as_root is None:
                runner.log.warning(
                    "bwrap cannot run as an unprivileged uid here (%s); running it as root, where "
                    "RLIMIT_NPROC is not enforced", failure,
                )
            failure = None if as_root is None else f"{failure}; as root: {as_root}"
        if failure:
            raise SandboxUnavailable(
                f"bubblewrap (bwrap) cannot create a sandbox on this host: {failure}. It needs user "
                f"namespaces (sysctl user.max_user_namespaces > 0)"
            )

    def _static_args(self) -> list[str]:
        args = [self.bwrap, "--unshare-all", "--unshare-user"]
        if self.network:
            args.append("--share-net")
        args += [
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--cap-drop", "ALL",
            "--uid", SANDBOX_ID,
            "--gid", SANDBOX_ID,
            "--hostname", "sandbox",
            "--clearenv",
        ]
        for key, value in self.env.items():
            args += ["--setenv", key, value]
        args += ["--ro-bind", "/usr", "/usr", *_system_dirs(), "--proc", "/proc", "--dev", "/dev"]
        if self.network:  # name resolution and TLS roots; nothing else from /etc
            for path in ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/ssl"):
                args += ["--ro-bind-try", path, path]
        return args

    def _argv(self, workdir: str, limits: Limits) -> list[str]:
        size = str(limits.memory_mb * runner.MIB)  # each scratch tmpfs; the memory cgroup caps the sum
        return [
            *self._head,
            "--size", size, "--perms", "1777", "--tmpfs", "/tmp",
            "--size", size, "--perms", "1777", "--tmpfs", "/dev/shm",
            "--bind", workdir, "/work",
            "--remount-ro", "/dev",
            "--remount-ro", "/",
            "--chdir", "/work",
            "--",
            self.python, "main.py",
        ]

    def _run(self, program: str, files: dict[str, str] | None, limits: Limits) -> tuple[runner.Outcome, bool]:
        ids = runner.sandbox_ids() if self.fresh_uid else None
        return runner.run_in_workdir(
            program, files, limits, ids,
            lambda workdir: (self._argv(workdir, limits), "/", {"PATH": "/usr/bin:/bin"}),
        )

    def _probe(self, limits: Limits) -> str | None:
        """None if bwrap runs `pass` under `limits`, else what went wrong."""
        probe_limits = limits.override(timeout_s=max(limits.timeout_s, 10.0))
        try:
            outcome, _ = self._run("pass", None, probe_limits)
        except SandboxUnavailable as exc:
            return str(exc)
        if outcome.returncode == 0:
            return None
        message = outcome.stderr.decode("utf-8", errors="replace").strip()
        return message or f"exit code {outcome.returncode}"

    def exec(self, program: str, files: dict[str, str] | None = None, limits: Limits | None = None) -> ExecResult:
        limits = limits or self.limits
        outcome, cgroup_oom = self._run(program, files, limits)
        if outcome.returncode == 1 and not outcome.stdout and outcome.stderr.startswith(b"bwrap: "):
            # Looks like bwrap's own setup failed, but the program could print that too: a
            # program-free probe under the same limits tells the two apart.
            failure = self._probe(limits)
            if failure:
                raise SandboxUnavailable(
                    f"bubblewrap (bwrap) failed to start the sandbox under {limits}: {failure} "
                    f"(its two helper processes count against `pids`)"
                )
        return runner.build_result(outcome, cgroup_oom)

    def cleanup(self) -> None:
        runner.remove_stale_cgroups(wait_s=1.0)

