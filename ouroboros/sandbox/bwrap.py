"""The `bwrap` backend: Python inside bubblewrap namespaces, with rlimits and cgroups.

What the program sees: /usr read-only (plus the merged-usr links /bin, /lib, ...), a fresh
/proc, a minimal read-only /dev, private /tmp and /dev/shm (tmpfs, each capped at the memory
limit), and its workdir at /work (read-write, the cwd). No other host file; the rest of the
root is an empty read-only tmpfs. (With `network=True` also /etc/resolv.conf, hosts,
nsswitch.conf and ssl, read-only.) It runs as uid/gid 65534 with no capabilities, in its own
user, pid, network (unless `network=True`), ipc, uts and cgroup namespaces, in a new session,
with a cleared environment: PATH, HOME=/work, LANG=C.UTF-8, PYTHONDONTWRITEBYTECODE=1 and the
allowlisted `env`. Nested user namespaces are disabled. The environment reaches the program as
bwrap's own environment, never as `--setenv` arguments, which any host user could read in `ps`.

A cold exec's program is the sandbox's pid 1 (`--as-pid-1`), so no process of bwrap's holds
its stdout and stderr inside the sandbox, where a process of the same uid could take them over
(the tasks harness relies on this). As pid 1 it ignores signals sent from inside the sandbox
that it does not handle, and orphans it does not reap stay zombies until the exec ends.

When the harness is root, bwrap itself is started as a fresh unprivileged host uid (see
`runner.sandbox_ids`): run by root, bwrap maps the sandbox uid to host uid 0, where
RLIMIT_NPROC does not apply and an escape would land as root.
"""
from __future__ import annotations

import os
import shutil

from ouroboros.sandbox import runner
from ouroboros.sandbox.base import Limits, SandboxUnavailable
from ouroboros.sandbox.local import LocalSandbox
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


# (bwrap, python, network, fresh uid) -> the start-up probe's answer, for this process.
_PROBED: dict[tuple, tuple[bool, str | None]] = {}


class BwrapSandbox(LocalSandbox):
    name = "bwrap"

    def __init__(
        self,
        limits: Limits | None = None,
        python: str = "/usr/bin/python3",
        env: dict[str, str] | None = None,
        network: bool = False,
        warm: bool = False,
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
        super().__init__(limits, found if found.startswith("/usr/") else real, env, network)
        self.warm = warm  # programs fork from one interpreter per workdir (sandbox/warm.py)
        self.bwrap = bwrap
        self.env = runner.base_env("/work", self.extra_env)
        # Root starts bwrap as the workdir's throwaway unprivileged uid (NPROC applies, no root
        # on the host). If this kernel refuses unprivileged user namespaces, bwrap runs as root.
        self.fresh_uid = os.geteuid() == 0
        self._head = self._static_args()
        # Whether bwrap works here at all: under default limits, so a tight config is not
        # mistaken for a host without unprivileged user namespaces (exec reports those). The
        # answer is the host's, so it is probed once per process, not once per sandbox: an
        # experiment opens a sandbox per cycle.
        key = (bwrap, self.python, network, self.fresh_uid)
        if key not in _PROBED:
            _PROBED[key] = self._startup_probe()
        self.fresh_uid, failure = _PROBED[key]
        if failure:
            raise SandboxUnavailable(
                f"bubblewrap (bwrap) cannot create a sandbox on this host: {failure}. It needs user "
                f"namespaces (sysctl user.max_user_namespaces > 0)"
            )

    def _startup_probe(self) -> tuple[bool, str | None]:
        """(whether to start bwrap as a fresh uid, why bwrap cannot run here or None)."""
        failure = self._probe(Limits())
        if failure and self.fresh_uid:
            self.fresh_uid = False
            as_root = self._probe(Limits())
            if as_root is None:
                runner.log.warning(
                    "bwrap cannot run as an unprivileged uid here (%s); running it as root, where "
                    "RLIMIT_NPROC is not enforced", failure,
                )
                return False, None
            return False, f"{failure}; as root: {as_root}"
        return self.fresh_uid, failure

    def _ids(self) -> tuple[int, int] | None:
        return runner.sandbox_ids() if self.fresh_uid else None

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
        ]
        args += ["--ro-bind", "/usr", "/usr", *_system_dirs(), "--proc", "/proc", "--dev", "/dev"]
        if self.network:  # name resolution and TLS roots; nothing else from /etc
            for path in ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/ssl"):
                args += ["--ro-bind-try", path, path]
        return args

    def _command(self, workdir: str, argv: list[str], limits: Limits) -> tuple[list[str], str, dict[str, str]]:
        size = str(limits.memory_mb * runner.MIB)  # each scratch tmpfs; the memory cgroup caps the sum
        host_argv = [
            *self._head,
            "--size", size, "--perms", "1777", "--tmpfs", "/tmp",
            "--size", size, "--perms", "1777", "--tmpfs", "/dev/shm",
            "--bind", workdir, "/work",
            "--remount-ro", "/dev",
            "--remount-ro", "/",
            "--chdir", "/work",
            "--",
            *argv,
        ]
        # bwrap passes its own environment to the program: exactly the sandbox's.
        return host_argv, "/", self.env

    def _cold_command(self, workdir: str, argv: list[str], limits: Limits) -> tuple[list[str], str, dict[str, str]]:
        # The program is the sandbox's pid 1: otherwise bwrap's own init process sits there
        # holding the exec's stdout and stderr, and it is dumpable, so any process of the
        # sandbox uid can take those pipes from it (/proc/1/fd, pidfd_getfd, ptrace) and read
        # or write what the host will take as the program's output.
        host_argv, cwd, env = self._command(workdir, argv, limits)
        at = host_argv.index("--die-with-parent")
        return [*host_argv[:at], "--as-pid-1", *host_argv[at:]], cwd, env

    def _probe(self, limits: Limits) -> str | None:
        """None if bwrap runs `pass` under `limits` in a throwaway workdir, else what went wrong."""
        probe = BwrapProbe(self, limits)
        try:
            outcome = probe.run()
        except SandboxUnavailable as exc:
            return str(exc)
        if outcome.returncode == 0:
            return None
        message = outcome.stderr.decode("utf-8", errors="replace").strip()
        return message or f"exit code {outcome.returncode}"

    def _result(self, outcome: runner.Outcome, oom: bool, limits: Limits) -> ExecResult:
        if outcome.returncode == 1 and not outcome.stdout and outcome.stderr.startswith(b"bwrap: "):
            # Looks like bwrap's own setup failed, but the program could print that too: a
            # program-free probe under the same limits tells the two apart.
            failure = self._probe(limits)
            if failure:
                raise SandboxUnavailable(
                    f"bubblewrap (bwrap) failed to start the sandbox under {limits}: {failure} "
                    f"(bwrap's own processes count against `pids`)"
                )
        return runner.build_result(outcome, oom)


class BwrapProbe:
    """Runs `python -c pass` through the sandbox's bwrap command line in a throwaway workdir."""

    def __init__(self, sandbox: BwrapSandbox, limits: Limits):
        self.sandbox = sandbox
        self.limits = limits.override(timeout_s=max(limits.timeout_s, 10.0))

    def run(self) -> runner.Outcome:
        from ouroboros.sandbox import reaper
        from ouroboros.sandbox.workdir import HostWorkdir

        ids = runner.sandbox_ids() if self.sandbox.fresh_uid else None
        if ids is not None:
            reaper.Janitor.ensure().track_uid(ids[0])
        workdir = HostWorkdir(reaper.owner_token(), ids, 1)
        cgroup = runner.ChildCgroup(self.limits)
        try:
            argv, cwd, env = self.sandbox._command(workdir.path, [self.sandbox.python, "-c", "pass"], self.limits)
            return runner.run_limited(argv, cwd=cwd, env=env, limits=self.limits, cgroup=cgroup, ids=ids)
        finally:
            cgroup.remove()
            workdir.remove()
